package decision

import (
	"net/netip"
	"testing"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// TestDenialCodes checks that the code of each denial, the policy's or
// the service's own, reaches the proxy in the answer, the request event
// and the network log entry alike.
func TestDenialCodes(t *testing.T) {
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, 64)
	e := NewExecution("x1", compile(t, testPolicy), events)
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	audit := NewExecution("x2", compile(t, testPolicy).Audited(), events)
	defer reg.Register(netip.MustParseAddr("10.88.0.3"), audit)()
	s := decider(t, reg)

	violation := httpReq(5, "10.88.0.2", "GET", "api.stripe.com", "/v1/products")
	violation.GetQuestion().GetHttp().Violation = "request host does not match the TLS server name"
	big := httpReq(6, "10.88.0.3", "GET", "api.stripe.com", "/v1/products")
	big.GetQuestion().GetHttp().ContentLength = 101
	tests := []struct {
		name string
		req  *egressv1.DecideRequest
		want policyv1.DenialCode
		exec *Execution // whose log and events hold it; nil for none
	}{
		{"allowed", httpReq(1, "10.88.0.2", "GET", "api.stripe.com", "/v1/products"), policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED, e},
		{"deny rule", httpReq(2, "10.88.0.2", "POST", "api.stripe.com", "/v1/charges"), policyv1.DenialCode_DENIAL_CODE_RULE_DENIED, e},
		{"method", httpReq(3, "10.88.0.2", "DELETE", "api.stripe.com", "/v1/products/p1"), policyv1.DenialCode_DENIAL_CODE_METHOD_NOT_ALLOWED, e},
		{"over max_requests", httpReq(4, "10.88.0.2", "GET", "api.stripe.com", "/v1/products"), policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED, e},
		{"the proxy's violation", violation, policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST, e},
		{"over max_request_bytes", big, policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED, audit},
		{"audit mode's would-block", httpReq(7, "10.88.0.3", "GET", "evil.example", "/"), policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED, audit},
		{"no execution owns the source", httpReq(8, "10.88.0.9", "GET", "api.stripe.com", "/v1/products"), policyv1.DenialCode_DENIAL_CODE_DECISION_UNAVAILABLE, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := ask(t, s, tt.req)
			if resp.GetDenialCode() != tt.want {
				t.Errorf("answer: %v by %q (%s), want %v", resp.GetDenialCode(), resp.GetRuleId(), resp.GetReason(), tt.want)
			}
			if tt.exec == nil {
				return
			}
			ev := <-events
			if ev.GetKind() != executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST || ev.GetDenialCode() != tt.want {
				t.Errorf("event %v, want a request event with %v", ev, tt.want)
			}
			log := tt.exec.Summary().Log
			if got := log[len(log)-1]; got.GetDenialCode() != tt.want {
				t.Errorf("log entry %v, want %v", got, tt.want)
			}
		})
	}
	if len(events) != 0 {
		t.Errorf("%d events more than the requests", len(events))
	}
}
