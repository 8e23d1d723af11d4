package policy

// Chain narrows a base policy by the ones after it, in order: the operator's
// file, then the caller's JWT claims, then the inline request policy. A
// request is allowed only if every policy allows it, so a later policy can
// only take access away. The decision reports the rule of the first policy
// that denied, or of the last when all allowed; Decision.Layer says which.
//
// Only the base policy's mode counts: the chain is in audit mode exactly
// when the base is, so a caller cannot turn the operator's enforcement into
// audit, and narrowing an audited base only adds would-block verdicts.
// Limits are the smallest non-zero limit of each kind.
//
// A nil base is [DenyAll]; a nil narrower policy narrows nothing (the source
// was absent). Chains may be chained again; the layers are flattened.
func Chain(base *Compiled, narrower ...*Compiled) *Compiled {
	if base == nil {
		base = DenyAll()
	}
	c := &Compiled{
		layers: append([]*layer(nil), base.layers...),
		audit:  base.audit,
		limits: base.limits,
	}
	for _, n := range narrower {
		if n == nil {
			continue
		}
		c.layers = append(c.layers, n.layers...)
		c.limits.MaxRequests = minNonZero(c.limits.MaxRequests, n.limits.MaxRequests)
		c.limits.MaxRequestBytes = minNonZero(c.limits.MaxRequestBytes, n.limits.MaxRequestBytes)
	}
	return c
}

func minNonZero[T uint32 | uint64](a, b T) T {
	if a == 0 || b != 0 && b < a {
		return b
	}
	return a
}
