package decision

import (
	"net/netip"
	"strings"
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// An execution's DNS queries past DNSBudget are denied with the budget's
// reason and code (budget_exceeded), one event says so, and a
// neighbour's are still answered.
func TestDNSBudget(t *testing.T) {
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, DNSBudget+16)
	e := NewExecution("x1", compile(t, testPolicy), events)
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	n := NewExecution("x2", compile(t, testPolicy), make(chan *executorv1.NetworkEvent, 16))
	defer reg.Register(netip.MustParseAddr("10.88.0.6"), n)()
	s := decider(t, reg)
	id := uint64(0)
	for range DNSBudget {
		id++
		if resp := ask(t, s, dnsReq(id, "10.88.0.2", "api.stripe.com")); resp.GetDecision() != policyv1.Decision_DECISION_ALLOW {
			t.Fatalf("query %d within the budget: %v %q", id, resp.GetDecision(), resp.GetReason())
		}
	}
	for range 5 {
		id++
		resp := ask(t, s, dnsReq(id, "10.88.0.2", "api.stripe.com"))
		if resp.GetDecision() != policyv1.Decision_DECISION_DENY || resp.GetRuleId() != "dns.budget" ||
			!strings.Contains(resp.GetReason(), "dns query budget of 1000") || resp.GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED {
			t.Fatalf("query %d over the budget: %v %q %q", id, resp.GetDecision(), resp.GetRuleId(), resp.GetReason())
		}
	}
	id++
	if resp := ask(t, s, dnsReq(id, "10.88.0.6", "api.stripe.com")); resp.GetDecision() != policyv1.Decision_DECISION_ALLOW {
		t.Errorf("neighbour's query: %v %q", resp.GetDecision(), resp.GetReason())
	}
	budgetEvents := 0
	for len(events) > 0 {
		if ev := <-events; ev.GetRuleId() == "dns.budget" {
			budgetEvents++
			if ev.GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED {
				t.Errorf("the spent budget's event %v, want budget_exceeded", ev)
			}
		}
	}
	if budgetEvents != 1 {
		t.Errorf("%d events for the spent budget, want 1", budgetEvents)
	}
}
