package policy

// Chain narrows a base policy by the ones after it, in order: the operator's
// file, then the caller's JWT claims, then the inline request policy. A
// request is allowed only if every policy allows it, so a later policy can
// only take access away. The decision reports the rule of the first policy
// that denied, or of the last when all allowed; Decision.Layer says which.
//
// Each policy's mode governs its own denials: an audit-mode policy's
// denial is a would-block verdict (the request is forwarded and marked),
// while an enforcing policy's denial blocks whatever the others say. So a
// tenant's policy can be rolled out in audit mode under an enforced
// operator policy, and no policy's mode can loosen another's. Limits are
// the smallest non-zero limit of each kind.
//
// A nil base is [DenyAll]; a nil narrower policy narrows nothing (the source
// was absent). Chains may be chained again; the layers are flattened.
func Chain(base *Compiled, narrower ...*Compiled) *Compiled {
	if base == nil {
		base = DenyAll()
	}
	c := &Compiled{
		layers: append([]*layer(nil), base.layers...),
		limits: base.limits,
	}
	for _, n := range narrower {
		if n == nil {
			continue
		}
		c.layers = append(c.layers, n.layers...)
		c.limits = c.limits.lower(n.limits)
	}
	return c
}

// lower returns l with each limit of o that is tighter.
func (l Limits) lower(o Limits) Limits {
	return Limits{
		MaxRequests:              MinNonZero(l.MaxRequests, o.MaxRequests),
		MaxRequestBytes:          MinNonZero(l.MaxRequestBytes, o.MaxRequestBytes),
		MaxTotalRequestBytes:     MinNonZero(l.MaxTotalRequestBytes, o.MaxTotalRequestBytes),
		MaxTotalResponseBytes:    MinNonZero(l.MaxTotalResponseBytes, o.MaxTotalResponseBytes),
		MaxConcurrentConnections: MinNonZero(l.MaxConcurrentConnections, o.MaxConcurrentConnections),
	}
}

// MinNonZero is the tighter of two limits where 0 means no limit.
func MinNonZero[T ~uint32 | ~uint64 | ~int64](a, b T) T {
	if a == 0 || b != 0 && b < a {
		return b
	}
	return a
}
