package policy

import (
	"testing"
)

// The operator's policy names the rules the seed's JWT payload mentions.
const seedOperatorYAML = `version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { id: stripe_products, path: /v1/products/**, action: allow }
      - { id: stripe_charges, methods: [POST], path: /v1/charges, action: allow }
  - host: api.github.com
    default: allow
`

// TestClaimsNarrows is the seed's payload: allowedDomains [api.stripe.com],
// apiLimits {stripe_products: true, stripe_charges: false}.
func TestClaimsNarrows(t *testing.T) {
	claims, err := Claims([]string{"api.stripe.com"}, []string{"stripe_charges"})
	if err != nil {
		t.Fatal(err)
	}
	c := Chain(mustParse(t, seedOperatorYAML), claims)
	tests := []struct {
		name     string
		req      Request
		decision string
		rule     string
		layer    int
	}{
		{name: "a rule the token keeps reports the operator's rule", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/p1"}, decision: "DECISION_ALLOW", rule: "stripe_products", layer: 0},
		{name: "a rule the token takes away", req: Request{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges"}, decision: "DECISION_DENY", rule: RuleTokenRevoked, layer: 1},
		{name: "a host outside allowedDomains", req: Request{Method: "GET", Host: "api.github.com", Path: "/"}, decision: "DECISION_DENY", rule: RuleTokenDomains, layer: 1},
		{name: "the operator's deny stays", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/customers"}, decision: "DECISION_DENY", rule: "hosts[0].default", layer: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := c.Decide(tt.req)
			if d.Decision.String() != tt.decision || d.RuleID != tt.rule || d.Layer != tt.layer {
				t.Errorf("Decide = %v %q layer %d (%s), want %s %q layer %d", d.Decision, d.RuleID, d.Layer, d.Reason, tt.decision, tt.rule, tt.layer)
			}
		})
	}
	if c.CouldAllowHost("api.github.com") || !c.CouldAllowHost("api.stripe.com") {
		t.Errorf("CouldAllowHost: github %v, stripe %v; want false, true", c.CouldAllowHost("api.github.com"), c.CouldAllowHost("api.stripe.com"))
	}
}

// TestClaimsWithoutDomains: no allowedDomains keeps every host; an empty
// list keeps none; a bad pattern is an error.
func TestClaimsWithoutDomains(t *testing.T) {
	op := mustParse(t, seedOperatorYAML)
	req := Request{Method: "GET", Host: "api.github.com", Path: "/"}
	all, err := Claims(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := Chain(op, all).Decide(req); d.RuleID != "hosts[1].default" || !d.Forward() {
		t.Errorf("nil allowedDomains: %v %q, want the operator's allow", d.Decision, d.RuleID)
	}
	none, err := Claims([]string{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := Chain(op, none).Decide(req); d.RuleID != RuleTokenDomains || d.Forward() {
		t.Errorf("empty allowedDomains: %v %q, want a deny by %s", d.Decision, d.RuleID, RuleTokenDomains)
	}
	if _, err := Claims([]string{"exa mple.com"}, nil); err == nil {
		t.Error("a malformed host pattern compiled")
	}
}

// TestClaimsNeverAddAccess: over a grid of requests, whatever an operator
// policy narrowed by claims allows, the operator's policy allows alone.
func TestClaimsNeverAddAccess(t *testing.T) {
	ops := []*Compiled{mustParse(t, seedOperatorYAML), mustParse(t, operatorYAML), DenyAll()}
	var claims []*Compiled
	for _, c := range []struct{ domains, revoked []string }{
		{nil, nil}, {[]string{}, nil}, {[]string{"api.stripe.com"}, []string{"stripe_charges"}},
		{[]string{"*.github.com", "evil.example.com"}, []string{"op-products", "hosts[1].default"}},
	} {
		cl, err := Claims(c.domains, c.revoked)
		if err != nil {
			t.Fatal(err)
		}
		claims = append(claims, cl)
	}
	hosts := []string{"api.stripe.com", "api.github.com", "evil.example.com"}
	paths := []string{"/", "/v1/charges", "/v1/products/x"}
	for _, op := range ops {
		for _, cl := range claims {
			c := Chain(op, cl)
			for _, h := range hosts {
				for _, p := range paths {
					for _, m := range []string{"GET", "POST"} {
						r := Request{Method: m, Host: h, Path: p}
						if c.Decide(r).Forward() && !op.Decide(r).Forward() {
							t.Errorf("claims let %+v through that the operator denies", r)
						}
					}
				}
				if c.CouldAllowHost(h) && !op.CouldAllowHost(h) {
					t.Errorf("claims made host %s possible", h)
				}
			}
		}
	}
}
