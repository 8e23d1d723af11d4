package decision

import (
	"net/netip"
	"testing"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// TestDNSAndRefusalDenialCodes: a DNS query for a name no host entry could
// allow is denied host_not_allowed in its answer and its event, an allowed
// one has no code, a query from an address no execution owns is
// decision_unavailable; a refused connection's event is ambiguous_request
// and a sampled per-source refusal's is rate_limited.
func TestDNSAndRefusalDenialCodes(t *testing.T) {
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, 64)
	e := NewExecution("x1", compile(t, "version: 1\ndefault: deny\nhosts:\n  - host: a.example\n    default: allow\n"), events)
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	const (
		none      = policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED
		host      = policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED
		ambiguous = policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST
		rate      = policyv1.DenialCode_DENIAL_CODE_RATE_LIMITED
	)
	dns := []struct {
		name     string
		decision policyv1.Decision
		code     policyv1.DenialCode
	}{
		{"a.example", policyv1.Decision_DECISION_ALLOW, none},
		{"b.example", policyv1.Decision_DECISION_DENY, host},
	}
	for i, tt := range dns {
		resp := ask(t, s, dnsReq(uint64(i+1), "10.88.0.2", tt.name))
		if resp.GetDecision() != tt.decision || resp.GetDenialCode() != tt.code {
			t.Errorf("DNS %s: %v %v, want %v %v", tt.name, resp.GetDecision(), resp.GetDenialCode(), tt.decision, tt.code)
		}
		ev := <-events
		if ev.GetKind() != executorv1.NetworkEventKind_NETWORK_EVENT_KIND_DNS || ev.GetHost() != tt.name || ev.GetDecision() != tt.decision || ev.GetDenialCode() != tt.code {
			t.Errorf("DNS %s: event %v, want %v %v", tt.name, ev, tt.decision, tt.code)
		}
	}
	if resp := ask(t, s, dnsReq(3, "10.88.0.9", "a.example")); resp.GetDecision() != policyv1.Decision_DECISION_DENY ||
		resp.GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_DECISION_UNAVAILABLE {
		t.Errorf("DNS from an address no execution owns: %v %v, want denied, decision_unavailable", resp.GetDecision(), resp.GetDenialCode())
	}

	refusals := []struct {
		r    *egressv1.Refusal
		code policyv1.DenialCode
	}{
		{&egressv1.Refusal{SourceIp: "10.88.0.2", Destination: "10.88.0.1:22", Reason: "not HTTP or TLS"}, ambiguous},
		{&egressv1.Refusal{SourceIp: "10.88.0.2", Destination: "10.88.0.1:443", Reason: "TLS without SNI"}, ambiguous},
		{&egressv1.Refusal{SourceIp: "10.88.0.2", Reason: "rate limited: 3 http questions refused within 1s", RateLimitedRequests: 3}, rate},
		{&egressv1.Refusal{SourceIp: "10.88.0.2", Reason: "rate limited: 2 dns questions refused within 1s", RateLimitedDnsQueries: 2}, rate},
	}
	for _, tt := range refusals {
		if err := s.Send(report(tt.r)); err != nil {
			t.Fatal(err)
		}
	}
	// Reports are handled in order, before the next question's answer.
	ask(t, s, dnsReq(4, "10.88.0.2", "a.example"))
	for _, tt := range refusals {
		ev := <-events
		if ev.GetKind() != executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED || ev.GetReason() != tt.r.GetReason() || ev.GetDenialCode() != tt.code {
			t.Errorf("refusal %q: event %v, want refused, %v", tt.r.GetReason(), ev, tt.code)
		}
	}
}
