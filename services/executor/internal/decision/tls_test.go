package decision

import (
	"net/netip"
	"strings"
	"testing"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// TestTLSServerName: a server name is allowed when some https entry could
// allow it, whatever the port, and the answer leaves no trace in the
// execution's network log, events or DNS budget.
func TestTLSServerName(t *testing.T) {
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, 64)
	e := NewExecution("x1", compile(t, `
version: 1
default: deny
hosts:
  - host: api.stripe.com
    rules:
      - { id: products, methods: [GET], path: "/v1/products/**", action: allow }
  - host: plain.example
    schemes: [http]
    default: allow
`), events)
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)

	tests := []struct {
		src, name string
		port      uint32
		want      policyv1.Decision
		rule      string
	}{
		{"10.88.0.2", "api.stripe.com", 443, policyv1.Decision_DECISION_ALLOW, "tls"},
		// Ports are each request's to decide, with the ports rule's reason.
		{"10.88.0.2", "api.stripe.com", 8443, policyv1.Decision_DECISION_ALLOW, "tls"},
		{"10.88.0.2", "evil.example", 443, policyv1.Decision_DECISION_DENY, "tls"},
		{"10.88.0.2", "plain.example", 443, policyv1.Decision_DECISION_DENY, "tls"},
		{"10.88.0.9", "api.stripe.com", 443, policyv1.Decision_DECISION_DENY, "no-execution"},
	}
	for i, tt := range tests {
		resp := ask(t, s, question(uint64(i+1), &egressv1.TlsServerName{SourceIp: tt.src, Name: tt.name, Port: tt.port}))
		if resp.GetDecision() != tt.want || resp.GetRuleId() != tt.rule {
			t.Errorf("%s from %s: %v by %q (%s), want %v by %q", tt.name, tt.src, resp.GetDecision(), resp.GetRuleId(), resp.GetReason(), tt.want, tt.rule)
		}
		if tt.rule == "tls" && tt.want == policyv1.Decision_DECISION_DENY && !strings.Contains(resp.GetReason(), "no rule of the policy could allow https to "+tt.name) {
			t.Errorf("%s: reason %q", tt.name, resp.GetReason())
		}
	}
	if sum := e.Summary(); len(sum.Log) != 0 || sum.Allowed+sum.Blocked != 0 {
		t.Errorf("TLS questions were logged: %+v", sum)
	}
	if len(events) != 0 {
		t.Errorf("TLS questions emitted %d network events", len(events))
	}
	if n := e.dnsQueries.Load(); n != 0 {
		t.Errorf("TLS questions spent %d of the DNS budget", n)
	}
}
