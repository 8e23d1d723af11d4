package egress

import (
	"sync/atomic"

	"github.com/sandpit-run/sandpit/services/policy"
)

// livePolicy is an execution's policy: the operator's current one narrowed
// by the execution's inline policy. The chain is built again only when the
// base changes, so a decision costs one pointer comparison.
type livePolicy struct {
	base   *atomic.Pointer[policy.Compiled]
	inline *policy.Compiled
	cached atomic.Pointer[chained]
}

type chained struct {
	base, chain *policy.Compiled
}

func (l *livePolicy) current() *policy.Compiled {
	b := l.base.Load()
	if c := l.cached.Load(); c != nil && c.base == b {
		return c.chain
	}
	c := &chained{base: b, chain: chain(b, l.inline)}
	l.cached.Store(c)
	return c.chain
}

// chain narrows the operator's policy base by narrow. A nil base (no
// operator policy, tenants decide) leaves narrow alone, and with neither
// every request is denied.
func chain(base, narrow *policy.Compiled) *policy.Compiled {
	if base == nil {
		return policy.Chain(narrow)
	}
	return policy.Chain(base, narrow)
}
