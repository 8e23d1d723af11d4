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
		{name: "inline (in audit mode) denies what the operator allows", req: Request{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges"}, decision: wouldD, rule: "no-charges", layer: 2},
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
	// The inline policy is in audit mode: its own denials are would-block,
	// and nothing else changes (the cases above are denied by the
	// enforcing layers, or by it).
	if c.Mode() != policyv1.Mode_MODE_AUDIT {
		t.Errorf("Mode = %v, want audit (the inline policy audits its own denials)", c.Mode())
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
						if c.CouldAllowHost(h) && (!a.CouldAllowHost(h) || !b.CouldAllowHost(h)) {
							t.Errorf("chain could allow host %s that one of its policies could not", h)
						}
					}
				}
			}
		}
	}
}

// TestChainAuditLayer: each policy's mode governs its own denials. An
// audited base does not soften an enforcing narrower's denial, and an
// enforcing base's denial wins over an audited narrower's.
func TestChainAuditLayer(t *testing.T) {
	audited := mustParse(t, "version: 1\nmode: audit\nhosts:\n  - host: api.example.com\n    default: allow\n")
	enforcing := mustParse(t, "version: 1\nmode: enforce\nhosts:\n  - host: api.example.com\n    default: allow\n  - host: other.example.com\n    default: allow\n")
	tests := []struct {
		name     string
		chain    *Compiled
		host     string
		decision policyv1.Decision
		layer    int
		source   string
	}{
		{name: "audited base denies, enforcing narrower allows", chain: Chain(audited.From("tenant"), enforcing.From("inline")), host: "other.example.com", decision: wouldD, layer: 0, source: "tenant"},
		{name: "both deny: the enforcing one blocks", chain: Chain(audited.From("tenant"), enforcing.From("inline")), host: "third.example.com", decision: denyD, layer: 1, source: "inline"},
		{name: "enforcing base denies before an audited narrower", chain: Chain(enforcing.From("operator"), audited.From("tenant")), host: "third.example.com", decision: denyD, layer: 0, source: "operator"},
		{name: "audited narrower denies what the base allows", chain: Chain(enforcing.From("operator"), audited.From("tenant")), host: "other.example.com", decision: wouldD, layer: 1, source: "tenant"},
		{name: "all allow", chain: Chain(enforcing.From("operator"), audited.From("tenant")), host: "api.example.com", decision: allowD, layer: 1, source: "tenant"},
		{name: "Audited turns enforcement into audit", chain: Chain(enforcing.From("operator"), enforcing.Audited().From("tenant")), host: "third.example.com", decision: denyD, layer: 0, source: "operator"},
		{name: "Audited alone", chain: enforcing.Audited(), host: "third.example.com", decision: wouldD, layer: 0, source: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.chain.Decide(Request{Method: "GET", Host: tt.host, Path: "/"})
			if d.Decision != tt.decision || d.Layer != tt.layer || d.Source != tt.source {
				t.Errorf("Decide = %v layer %d source %q (%s), want %v layer %d source %q", d.Decision, d.Layer, d.Source, d.Reason, tt.decision, tt.layer, tt.source)
			}
		})
	}
	if !Chain(enforcing, audited).CouldAllowHost("other.example.com") {
		t.Error("CouldAllowHost = false for a host only an audited policy denies, want true")
	}
	if Chain(audited, enforcing).CouldAllowHost("third.example.com") {
		t.Error("CouldAllowHost = true for a host an enforcing policy denies, want false")
	}
	if enforcing.Mode() != policyv1.Mode_MODE_ENFORCE || enforcing.Audited().Mode() != policyv1.Mode_MODE_AUDIT {
		t.Error("Audited changed its receiver, or did not audit")
	}
	if got := enforcing.Narrowed(Limits{MaxRequests: 7}).Limits(); got.MaxRequests != 7 {
		t.Errorf("Narrowed limits = %+v, want max_requests 7", got)
	}
	if got := Chain(enforcing.Narrowed(Limits{MaxRequests: 7}), mustParse(t, "version: 1\nlimits: { max_requests: 9 }\n")).Limits(); got.MaxRequests != 7 {
		t.Errorf("chain of Narrowed limits = %+v, want max_requests 7", got)
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
		if got := MinNonZero(tt.a, tt.b); got != tt.want {
			t.Errorf("MinNonZero(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
