package policy

import (
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// The operator's file: Stripe's products and charges, GitHub, nothing else.
const operatorYAML = `version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { id: op-products, path: /v1/products/**, action: allow }
      - { id: op-charges, methods: [POST], path: /v1/charges, action: allow }
  - host: api.github.com
    default: allow
limits: { max_requests: 100, max_request_bytes: 1MiB }
`

// The caller's claims: only Stripe, and fewer requests.
const claimsYAML = `version: 1
hosts:
  - host: api.stripe.com
    default: allow
limits: { max_requests: 10 }
`

// The inline policy tries to add a host and to allow everything; it also
// forbids charges, with a reason.
const inlineYAML = `version: 1
default: allow
mode: audit
hosts:
  - host: api.stripe.com
    rules:
      - { id: no-charges, path: /v1/charges, action: deny, reason: "this job must not charge" }
    default: allow
  - host: evil.example.com
    default: allow
limits: { max_requests: 50, max_request_bytes: 4KiB }
`

func TestChainNarrows(t *testing.T) {
	op, claims, inline := mustParse(t, operatorYAML), mustParse(t, claimsYAML), mustParse(t, inlineYAML)
	c := Chain(op, claims, inline)
	tests := []struct {
		name     string
		req      Request
		decision policyv1.Decision
		rule     string
		layer    int
	}{
		{name: "all allow: last layer reports", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/p1"}, decision: allowD, rule: "hosts[0].default", layer: 2},
		{name: "inline denies what the operator allows", req: Request{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges"}, decision: denyD, rule: "no-charges", layer: 2},
		{name: "claims deny what the operator allows", req: Request{Method: "GET", Host: "api.github.com", Path: "/"}, decision: denyD, rule: "default", layer: 1},
		{name: "inline cannot add a host", req: Request{Method: "GET", Host: "evil.example.com", Path: "/"}, decision: denyD, rule: "default", layer: 0},
		{name: "inline cannot widen a host", req: Request{Method: "DELETE", Host: "api.stripe.com", Path: "/v1/customers"}, decision: denyD, rule: "hosts[0].default", layer: 0},
		{name: "inline default allow adds nothing", req: Request{Method: "GET", Host: "example.org", Path: "/"}, decision: denyD, rule: "default", layer: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := c.Decide(tt.req)
			if d.Decision != tt.decision || d.RuleID != tt.rule || d.Layer != tt.layer {
				t.Errorf("Decide = %v %q layer %d (%s), want %v %q layer %d", d.Decision, d.RuleID, d.Layer, d.Reason, tt.decision, tt.rule, tt.layer)
			}
		})
	}
	if c.Mode() != policyv1.Mode_MODE_ENFORCE {
		t.Errorf("an audit inline policy made the chain %v, want enforce", c.Mode())
	}
	if want := (Limits{MaxRequests: 10, MaxRequestBytes: 4 << 10}); c.Limits() != want {
		t.Errorf("Limits = %+v, want %+v", c.Limits(), want)
	}
	hosts := []struct {
		host string
		want bool
	}{
		{host: "api.stripe.com", want: true},
		{host: "api.github.com", want: false},
		{host: "evil.example.com", want: false},
	}
	for _, tt := range hosts {
		if got := c.CouldAllowHost(tt.host); got != tt.want {
			t.Errorf("CouldAllowHost(%s) = %v, want %v", tt.host, got, tt.want)
		}
	}
}

// TestChainNeverAddsAccess checks the narrowing invariant over a grid of
// requests: whatever the chain allows, each of its policies allows alone.
func TestChainNeverAddsAccess(t *testing.T) {
	policies := []*Compiled{mustParse(t, operatorYAML), mustParse(t, claimsYAML), mustParse(t, inlineYAML), DenyAll()}
	hosts := []string{"api.stripe.com", "api.github.com", "evil.example.com", "example.org"}
	paths := []string{"/", "/v1/charges", "/v1/products", "/v1/products/x", "/repos"}
	methods := []string{"GET", "POST", "DELETE"}
	for _, a := range policies {
		for _, b := range policies {
			c := Chain(a, b)
			for _, h := range hosts {
				for _, p := range paths {
					for _, m := range methods {
						r := Request{Method: m, Host: h, Path: p}
						if c.Decide(r).Action == policyv1.Action_ACTION_ALLOW &&
							(a.Decide(r).Action != policyv1.Action_ACTION_ALLOW || b.Decide(r).Action != policyv1.Action_ACTION_ALLOW) {
							t.Errorf("chain allows %+v that one of its policies denies", r)
						}
						if c.CouldAllowHost(h) && (!a.CouldAllowHost(h) || !b.CouldAllowHost(h)) && !a.audit {
							t.Errorf("chain could allow host %s that one of its policies could not", h)
						}
					}
				}
			}
		}
	}
}

func TestChainAuditBase(t *testing.T) {
	base := mustParse(t, "version: 1\nmode: audit\ndefault: allow\n")
	narrow := mustParse(t, "version: 1\nmode: enforce\nhosts:\n  - host: api.example.com\n    default: allow\n")
	c := Chain(base, narrow)
	if c.Mode() != policyv1.Mode_MODE_AUDIT {
		t.Fatalf("Mode = %v, want audit (the base's)", c.Mode())
	}
	d := c.Decide(Request{Method: "GET", Host: "other.example.com", Path: "/"})
	if d.Decision != wouldD || d.Layer != 1 || d.RuleID != "default" {
		t.Errorf("Decide = %v %q layer %d, want would-block by layer 1's default", d.Decision, d.RuleID, d.Layer)
	}
	if !c.CouldAllowHost("other.example.com") {
		t.Error("CouldAllowHost under an audit base = false, want true")
	}
}

func TestChainNilAndNesting(t *testing.T) {
	op := mustParse(t, operatorYAML)
	req := Request{Method: "GET", Host: "api.github.com", Path: "/"}
	if d := Chain(op, nil, nil).Decide(req); d.Decision != allowD || d.Layer != 0 {
		t.Errorf("nil narrowers narrowed: %v layer %d", d.Decision, d.Layer)
	}
	if d := Chain(nil, op).Decide(req); d.Decision != denyD || d.RuleID != "default" || d.Layer != 0 {
		t.Errorf("a nil base did not deny all: %v %q layer %d", d.Decision, d.RuleID, d.Layer)
	}
	claims := mustParse(t, claimsYAML)
	nested := Chain(Chain(op, claims), mustParse(t, inlineYAML))
	if d := nested.Decide(Request{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges"}); d.RuleID != "no-charges" || d.Layer != 2 {
		t.Errorf("nested chain: %q layer %d, want no-charges layer 2", d.RuleID, d.Layer)
	}
	// Chaining must not change the chains it was built from.
	if d := op.Decide(req); d.Decision != allowD {
		t.Errorf("Chain changed its base: %v", d.Decision)
	}
}

func TestMinNonZero(t *testing.T) {
	tests := []struct{ a, b, want uint64 }{
		{0, 0, 0}, {0, 5, 5}, {5, 0, 5}, {3, 5, 3}, {5, 3, 3},
	}
	for _, tt := range tests {
		if got := minNonZero(tt.a, tt.b); got != tt.want {
			t.Errorf("minNonZero(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
