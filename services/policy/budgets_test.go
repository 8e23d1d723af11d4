package policy

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"google.golang.org/protobuf/proto"
)

const budgetsYAML = `version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { id: products, path: /v1/products/**, action: allow, rate: { per_second: 5, burst: 10 } }
      - { id: charges, path: /v1/charges, action: allow, rate: { per_second: 2 } }
      - { id: rest, action: allow }
limits:
  max_total_request_bytes: 1MiB
  max_total_response_bytes: 4096
  max_concurrent_connections: 3
`

func TestParseBudgets(t *testing.T) {
	p, err := Parse([]byte(budgetsYAML))
	if err != nil {
		t.Fatal(err)
	}
	wantLimits := &policyv1.PolicyLimits{MaxTotalRequestBytes: 1 << 20, MaxTotalResponseBytes: 4096, MaxConcurrentConnections: 3}
	if !proto.Equal(p.GetLimits(), wantLimits) {
		t.Errorf("limits = %v, want %v", p.GetLimits(), wantLimits)
	}
	if r := p.GetHosts()[0].GetRules()[0].GetRate(); r.GetPerSecond() != 5 || r.GetBurst() != 10 {
		t.Errorf("rules[0].rate = %v, want 5/s burst 10", r)
	}
	c, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Limits{MaxTotalRequestBytes: 1 << 20, MaxTotalResponseBytes: 4096, MaxConcurrentConnections: 3}); c.Limits() != want {
		t.Errorf("Limits = %+v, want %+v", c.Limits(), want)
	}
	out := roundTrip(t, p)
	if !strings.Contains(string(out), "max_total_request_bytes: 1MiB") || !strings.Contains(string(out), "rate: {per_second: 5, burst: 10}") {
		t.Errorf("Marshal wrote:\n%s", out)
	}
}

func TestParseBudgetErrors(t *testing.T) {
	rule := func(r string) string {
		return "version: 1\nhosts:\n  - host: a.com\n    rules:\n      - " + r + "\n"
	}
	tests := []struct {
		name, yaml, field, reason string
	}{
		{"rate not a mapping", rule("{action: allow, rate: 5}"), "hosts[0].rules[0].rate", "a mapping"},
		{"rate unknown key", rule("{action: allow, rate: {per_minute: 5}}"), "hosts[0].rules[0].rate", `unknown key "per_minute"`},
		{"rate zero", rule("{action: allow, rate: {burst: 5}}"), "hosts[0].rules[0].rate.per_second", "1 to 10000"},
		{"rate too fast", rule("{action: allow, rate: {per_second: 10001}}"), "hosts[0].rules[0].rate.per_second", "1 to 10000"},
		{"burst too big", rule("{action: allow, rate: {per_second: 1, burst: 10001}}"), "hosts[0].rules[0].rate.burst", "more than 10000"},
		{"rate on a deny rule", rule("{action: deny, rate: {per_second: 1}}"), "hosts[0].rules[0].rate", "only allow rules"},
		{"total request MB", "version: 1\nlimits: {max_total_request_bytes: 1MB}\n", "limits.max_total_request_bytes", "KiB"},
		{"total response negative", "version: 1\nlimits: {max_total_response_bytes: -1}\n", "limits.max_total_response_bytes", "whole number"},
		{"concurrency too big", "version: 1\nlimits: {max_concurrent_connections: 4294967296}\n", "limits.max_concurrent_connections", "more than"},
		{"unknown limit", "version: 1\nlimits: {max_total_bytes: 1}\n", "limits", `unknown key "max_total_bytes"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse = %v, want field errors", err)
			}
			for _, e := range errs {
				if e.Field == tt.field && strings.Contains(e.Reason, tt.reason) {
					return
				}
			}
			t.Errorf("Parse = %v, want %s: ...%s...", err, tt.field, tt.reason)
		})
	}
}

// Every policy of a chain that allows a request brings its rule's rate:
// a narrower policy whose rule has none cannot lift a wider one's.
func TestChainRates(t *testing.T) {
	op := mustParse(t, budgetsYAML)
	inline := mustParse(t, `version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { id: mine, path: /v1/products/**, action: allow, rate: { per_second: 1 } }
      - { id: open, action: allow }
limits: { max_total_response_bytes: 1KiB, max_concurrent_connections: 5, max_total_request_bytes: 0 }
`)
	c := Chain(op, inline)
	tests := []struct {
		path string
		want []Rate
	}{
		{"/v1/products/p1", []Rate{{RuleID: "products", Layer: 0, PerSecond: 5, Burst: 10}, {RuleID: "mine", Layer: 1, PerSecond: 1, Burst: 1}}},
		{"/v1/charges", []Rate{{RuleID: "charges", Layer: 0, PerSecond: 2, Burst: 2}}},
		{"/v1/other", nil},
	}
	for _, tt := range tests {
		d := c.Decide(Request{Method: "GET", Host: "api.stripe.com", Path: tt.path})
		if d.Decision != policyv1.Decision_DECISION_ALLOW || !reflect.DeepEqual(d.Rates, tt.want) {
			t.Errorf("%s: %v rates %+v, want allow %+v", tt.path, d.Decision, d.Rates, tt.want)
		}
	}
	// Each limit is the smallest non-zero one of the chain.
	if want := (Limits{MaxTotalRequestBytes: 1 << 20, MaxTotalResponseBytes: 1 << 10, MaxConcurrentConnections: 3}); c.Limits() != want {
		t.Errorf("Limits = %+v, want %+v", c.Limits(), want)
	}
	// An audit-mode would-block is forwarded, so its rates apply too.
	audit := mustParse(t, "version: 1\nmode: audit\ndefault: deny\n")
	if d := Chain(op, audit).Decide(Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/charges"}); d.Decision != policyv1.Decision_DECISION_WOULD_BLOCK || len(d.Rates) != 1 {
		t.Errorf("audited: %v rates %+v, want would-block with the operator's rate", d.Decision, d.Rates)
	}
}
