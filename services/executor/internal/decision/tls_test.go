package decision

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

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

// TestTLSPassthrough: a passed-through name is answered passthrough and
// recorded as one request (CONNECT https://host:port) whose outcome
// carries the bytes each way; max_concurrent_connections holds it while it
// is open and max_requests counts it; a name the policy intercepts is not
// passed through.
func TestTLSPassthrough(t *testing.T) {
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, 64)
	e := NewExecution("x1", compile(t, `
version: 1
hosts:
  - host: pinned.example
    passthrough: true
    ports: [443, 8443]
  - host: api.stripe.com
    default: allow
limits: { max_concurrent_connections: 1, max_requests: 2, max_total_response_bytes: 1MiB }
`), events)
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	tlsQ := func(id uint64, name string, port uint32) *egressv1.DecideRequest {
		return question(id, &egressv1.TlsServerName{SourceIp: "10.88.0.2", Name: name, Port: port})
	}

	resp := ask(t, s, tlsQ(1, "pinned.example", 8443))
	if resp.GetDecision() != policyv1.Decision_DECISION_ALLOW || !resp.GetPassthrough() || resp.GetRuleId() != "hosts[0].passthrough" || resp.GetMaxResponseBytes() != 1<<20 {
		t.Fatalf("pinned.example: %v passthrough=%v by %q, max response %d", resp.GetDecision(), resp.GetPassthrough(), resp.GetRuleId(), resp.GetMaxResponseBytes())
	}
	if ev := <-events; ev.GetKind() != executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST || ev.GetMethod() != "CONNECT" ||
		ev.GetUrl() != "https://pinned.example:8443" || ev.GetRuleId() != "hosts[0].passthrough" {
		t.Errorf("request event %v", ev)
	}
	// While it is open, a second connection is over the concurrency limit.
	wantRefused(t, ask(t, s, tlsQ(2, "pinned.example", 443)), ruleConcurrent, 1)
	<-events
	if err := s.Send(report(&egressv1.Outcome{QuestionId: 1, BytesSent: 517, BytesReceived: 4096, Duration: durationpb.New(time.Second)})); err != nil {
		t.Fatal(err)
	}
	// Intercepted names are answered as before, and recorded nowhere.
	if resp := ask(t, s, tlsQ(3, "api.stripe.com", 443)); resp.GetDecision() != policyv1.Decision_DECISION_ALLOW || resp.GetPassthrough() || resp.GetRuleId() != "tls" {
		t.Errorf("api.stripe.com: %v passthrough=%v by %q", resp.GetDecision(), resp.GetPassthrough(), resp.GetRuleId())
	}
	if ev := <-events; ev.GetKind() != executorv1.NetworkEventKind_NETWORK_EVENT_KIND_OUTCOME || ev.GetRequestId() != 1 ||
		ev.GetBytesSent() != 517 || ev.GetBytesReceived() != 4096 || ev.GetDuration().AsDuration() != time.Second {
		t.Errorf("outcome event %v", ev)
	}
	// The third connection is over max_requests (two were counted).
	if resp := ask(t, s, tlsQ(4, "pinned.example", 443)); resp.GetDecision() != policyv1.Decision_DECISION_DENY || !resp.GetPassthrough() ||
		resp.GetRuleId() != "limits.max_requests" || resp.GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED {
		t.Errorf("over max_requests: %v passthrough=%v by %q code %v", resp.GetDecision(), resp.GetPassthrough(), resp.GetRuleId(), resp.GetDenialCode())
	}
	sum := e.Summary()
	if sum.Allowed != 1 || sum.Blocked != 2 || len(sum.Log) != 3 || sum.RequestBytes != 517 || sum.ResponseBytes != 4096 {
		t.Errorf("summary: allowed %d blocked %d, %d entries, bytes %d/%d", sum.Allowed, sum.Blocked, len(sum.Log), sum.RequestBytes, sum.ResponseBytes)
	}
	if l := sum.Log[0]; l.GetMethod() != "CONNECT" || l.GetUrl() != "https://pinned.example:8443" || l.GetBlocked() {
		t.Errorf("log entry %v", l)
	}
}
