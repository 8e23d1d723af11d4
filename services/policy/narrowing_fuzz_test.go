package policy

import (
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// genPolicy builds a policy from fuzz bytes: hosts, rules (methods, path
// pattern, action, websocket), defaults, mode and schemes drawn from small
// sets that overlap, so that the sources of a chain disagree often; a
// host byte with its top bit set makes a pass-through entry (no rules,
// ports 443 and 8443 when 0x40 is set too). It returns nil when the bytes
// make a policy that does not validate.
func genPolicy(data []byte) (*Compiled, []byte) {
	next := func() byte {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return b
	}
	hosts := []string{"api.stripe.com", "*.example.com", "a.example.com", "api.github.com", "10.0.0.5"}
	paths := []string{"", "/", "/v1/charges", "/v1/products/**", "/v1/*", "/admin/**", "/v1/products"}
	methods := []string{"GET", "POST", "DELETE"}
	action := func(b byte) policyv1.Action {
		if b&1 == 1 {
			return policyv1.Action_ACTION_ALLOW
		}
		return policyv1.Action_ACTION_DENY
	}
	head := next()
	p := &policyv1.Policy{DefaultAction: action(head)}
	if head&2 != 0 {
		p.Mode = policyv1.Mode_MODE_AUDIT
	}
	if lim := next(); lim%3 != 0 {
		p.Limits = &policyv1.PolicyLimits{MaxRequests: uint32(lim % 50), MaxRequestBytes: uint64(lim%7) << 10}
	}
	used := map[string]bool{}
	for n := int(head>>2) % 4; n > 0; n-- {
		hb := next()
		h := hosts[int(hb)%len(hosts)]
		if used[h] {
			continue
		}
		used[h] = true
		if hb&0x80 != 0 {
			hp := &policyv1.HostPolicy{Host: h, Passthrough: true}
			if hb&0x40 != 0 {
				hp.Ports = []uint32{443, 8443}
			}
			p.Hosts = append(p.Hosts, hp)
			continue
		}
		hp := &policyv1.HostPolicy{Host: h, DefaultAction: action(hb >> 3)}
		if hb&0x40 != 0 && h != "10.0.0.5" {
			hp.Schemes = []string{"https", "http"}
		}
		for r := int(next()) % 4; r > 0; r-- {
			rb, mb := next(), next()
			rule := &policyv1.Rule{Path: paths[int(rb)%len(paths)], Action: action(rb >> 3), Websocket: rb&0x20 != 0 && rb&0x08 != 0}
			for i, m := range methods {
				if mb&(1<<i) != 0 {
					rule.Methods = append(rule.Methods, m)
				}
			}
			hp.Rules = append(hp.Rules, rule)
		}
		p.Hosts = append(p.Hosts, hp)
	}
	c, err := Compile(p)
	if err != nil {
		return nil, data
	}
	return c, data
}

// FuzzChainNeverAddsAccess: for any two to four policies (operator, tenant,
// token, inline) and any request of a grid, the chain allows a request
// only if every one of them allows it alone, forwards one only if no
// enforcing one blocks it alone, its limits are never looser than any
// one's, and when it denies, the layer it names is one that denies the
// request alone.
func FuzzChainNeverAddsAccess(f *testing.F) {
	f.Add([]byte{0x05, 0x01, 0x02, 0x13, 0x07, 0x0d, 0x02, 0x00, 0x01}, uint8(2))
	f.Add([]byte{0xff, 0x19, 0x03, 0x1b, 0x07, 0x22, 0x01, 0x0c, 0x31, 0x02, 0x09, 0x05}, uint8(3))
	f.Add([]byte{0x0e, 0x04, 0x01, 0x08, 0x02, 0xf1, 0x45, 0x02, 0x19, 0x07}, uint8(4))
	reqs := []Request{}
	for _, h := range []string{"api.stripe.com", "a.example.com", "b.example.com", "api.github.com", "10.0.0.5", "example.org"} {
		for _, p := range []string{"/", "/v1/charges", "/v1/products", "/v1/products/x", "/admin/x", "/v1/x"} {
			for _, m := range []string{"GET", "POST", "DELETE"} {
				reqs = append(reqs, Request{Method: m, Host: h, Path: p})
				reqs = append(reqs, Request{Method: m, Host: h, Path: p, Scheme: SchemeHTTP})
			}
		}
		reqs = append(reqs, Request{Method: "GET", Host: h, Path: "/v1/x", WebSocket: true})
	}
	f.Fuzz(func(t *testing.T, data []byte, n uint8) {
		var sources []*Compiled
		for i := 0; i < 2+int(n)%3; i++ {
			var c *Compiled
			c, data = genPolicy(data)
			if c == nil {
				return
			}
			sources = append(sources, c)
		}
		chain := Chain(sources[0], sources[1:]...)
		for i, s := range sources {
			for what, pair := range map[string][2]uint64{
				"max_requests":      {uint64(chain.Limits().MaxRequests), uint64(s.Limits().MaxRequests)},
				"max_request_bytes": {chain.Limits().MaxRequestBytes, s.Limits().MaxRequestBytes},
			} {
				if got, one := pair[0], pair[1]; one != 0 && (got == 0 || got > one) {
					t.Fatalf("the chain's %s is %d, looser than source %d's %d", what, got, i, one)
				}
			}
		}
		for _, r := range reqs {
			d := chain.Decide(r)
			if d.Action == policyv1.Action_ACTION_ALLOW {
				for i, s := range sources {
					if s.Decide(r).Action != policyv1.Action_ACTION_ALLOW {
						t.Fatalf("the chain allows %+v, which source %d denies alone", r, i)
					}
				}
				continue
			}
			if d.Layer < 0 || d.Layer >= len(sources) || sources[d.Layer].Decide(r).Action == policyv1.Action_ACTION_ALLOW {
				t.Fatalf("the chain denies %+v naming layer %d (rule %q), which allows it alone", r, d.Layer, d.RuleID)
			}
			// Forwarded although denied (would-block): no enforcing source
			// may deny it alone; blocked: the layer named enforces.
			for i, s := range sources {
				alone := s.Decide(r)
				if d.Forward() && alone.Decision == policyv1.Decision_DECISION_DENY {
					t.Fatalf("the chain forwards %+v (%v), which enforcing source %d blocks alone", r, d.Decision, i)
				}
				if !d.Forward() && i == d.Layer && alone.Decision != policyv1.Decision_DECISION_DENY {
					t.Fatalf("the chain blocks %+v naming layer %d, which alone only %v", r, i, alone.Decision)
				}
			}
		}
	})
}
