package decision

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy"
)

const testPolicy = `
version: 1
default: deny
hosts:
  - host: api.stripe.com
    rules:
      - { id: products, methods: [GET], path: "/v1/products/**", action: allow }
      - { id: no-charges, methods: [POST], path: /v1/charges, action: deny, reason: "charges are not allowed" }
    default: deny
limits: { max_requests: 3, max_request_bytes: 100 }
`

func compile(t *testing.T, y string) *policy.Compiled {
	t.Helper()
	p, err := policy.Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	c, err := policy.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// decider serves the service on loopback and returns a Decide stream.
func decider(t *testing.T, reg *Registry) grpc.BidiStreamingClient[policyv1.DecideRequest, policyv1.DecideResponse] {
	t.Helper()
	srv := grpc.NewServer()
	policyv1.RegisterPolicyDecisionServiceServer(srv, NewService(reg, slog.New(slog.NewTextHandler(io.Discard, nil))))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stream, err := policyv1.NewPolicyDecisionServiceClient(conn).Decide(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

func ask(t *testing.T, s grpc.BidiStreamingClient[policyv1.DecideRequest, policyv1.DecideResponse], req *policyv1.DecideRequest) *policyv1.DecideResponse {
	t.Helper()
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetId() != req.GetId() {
		t.Fatalf("response id %d for request %d", resp.GetId(), req.GetId())
	}
	return resp
}

func httpReq(id uint64, src, method, host, path string) *policyv1.DecideRequest {
	return &policyv1.DecideRequest{Id: id, Kind: &policyv1.DecideRequest_Http{Http: &policyv1.HttpRequest{
		SourceIp: src, Method: method, Scheme: "https", Host: host, Port: 443, Path: path, ContentLength: -1,
	}}}
}

func TestDecideByExecutionPolicy(t *testing.T) {
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, 64)
	e := NewExecution("x1", compile(t, testPolicy), events)
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)

	tests := []struct {
		req  *policyv1.DecideRequest
		want policyv1.Decision
		rule string
	}{
		{httpReq(1, "10.88.0.2", "GET", "api.stripe.com", "/v1/products"), policyv1.Decision_DECISION_ALLOW, "products"},
		{httpReq(2, "10.88.0.2", "POST", "api.stripe.com", "/v1/charges"), policyv1.Decision_DECISION_DENY, "no-charges"},
		{httpReq(3, "10.88.0.9", "GET", "api.stripe.com", "/v1/products"), policyv1.Decision_DECISION_DENY, "no-execution"},
		{httpReq(4, "10.88.0.2", "GET", "evil.example", "/"), policyv1.Decision_DECISION_DENY, "default"},
	}
	for _, tt := range tests {
		resp := ask(t, s, tt.req)
		if resp.GetDecision() != tt.want || resp.GetRuleId() != tt.rule {
			t.Errorf("request %d: %v by %q, want %v by %q (%s)", tt.req.GetId(), resp.GetDecision(), resp.GetRuleId(), tt.want, tt.rule, resp.GetReason())
		}
		// The proxy enforces the body limit on what it forwards.
		if want := map[bool]uint64{true: 100, false: 0}[tt.want == policyv1.Decision_DECISION_ALLOW]; resp.GetMaxRequestBytes() != want {
			t.Errorf("request %d: max_request_bytes %d, want %d", tt.req.GetId(), resp.GetMaxRequestBytes(), want)
		}
	}
	// The fourth request of x1 exceeds max_requests: 3.
	if resp := ask(t, s, httpReq(5, "10.88.0.2", "GET", "api.stripe.com", "/v1/products/prod_1")); resp.GetRuleId() != "limits.max_requests" {
		t.Errorf("request over max_requests: %v by %q", resp.GetDecision(), resp.GetRuleId())
	}

	if err := s.Send(&policyv1.DecideRequest{Id: 6, Kind: &policyv1.DecideRequest_Outcome{Outcome: &policyv1.Outcome{RequestId: 1, StatusCode: 200, BytesReceived: 42}}}); err != nil {
		t.Fatal(err)
	}
	// A DNS answer after the outcome proves the outcome was handled.
	dns := ask(t, s, &policyv1.DecideRequest{Id: 7, Kind: &policyv1.DecideRequest_Dns{Dns: &policyv1.DnsQuery{SourceIp: "10.88.0.2", Name: "api.stripe.com", Type: "A"}}})
	if dns.GetDecision() != policyv1.Decision_DECISION_ALLOW {
		t.Errorf("DNS for a policy host: %v", dns.GetDecision())
	}
	if dns := ask(t, s, &policyv1.DecideRequest{Id: 8, Kind: &policyv1.DecideRequest_Dns{Dns: &policyv1.DnsQuery{SourceIp: "10.88.0.2", Name: "evil.example", Type: "A"}}}); dns.GetDecision() != policyv1.Decision_DECISION_DENY {
		t.Errorf("DNS for a host no rule allows: %v", dns.GetDecision())
	}

	sum := e.Summary()
	if sum.Allowed != 1 || sum.Blocked != 3 || len(sum.Log) != 4 {
		t.Fatalf("summary %+v", sum)
	}
	if sum.Log[0].GetStatusCode() != 200 || sum.Log[0].GetUrl() != "https://api.stripe.com/v1/products" || sum.Log[0].GetBlocked() {
		t.Errorf("log[0] %v", sum.Log[0])
	}
	if sum.Log[1].GetStatusCode() != 403 || !sum.Log[1].GetBlocked() || sum.Log[1].GetReason() != "charges are not allowed" {
		t.Errorf("log[1] %v", sum.Log[1])
	}
	var kinds []executorv1.NetworkEventKind
	for len(events) > 0 {
		kinds = append(kinds, (<-events).GetKind())
	}
	want := []executorv1.NetworkEventKind{1, 1, 1, 1, 2, 3, 3} // 4 requests, 1 outcome, 2 DNS
	if len(kinds) != len(want) {
		t.Fatalf("events %v, want %v", kinds, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Errorf("event %d is %v, want %v", i, kinds[i], want[i])
		}
	}
}

func TestViolationBlocksEvenInAudit(t *testing.T) {
	reg := NewRegistry()
	e := NewExecution("x1", compile(t, "version: 1\nmode: audit\ndefault: allow\n"), make(chan *executorv1.NetworkEvent, 8))
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	req := httpReq(1, "10.88.0.2", "GET", "a.example", "/")
	req.GetHttp().Violation = "Host a.example does not match the TLS server name b.example"
	if resp := ask(t, s, req); resp.GetDecision() != policyv1.Decision_DECISION_DENY || resp.GetRuleId() != "proxy" {
		t.Errorf("violation: %v by %q", resp.GetDecision(), resp.GetRuleId())
	}
	big := httpReq(2, "10.88.0.2", "POST", "a.example", "/")
	if resp := ask(t, s, big); resp.GetDecision() != policyv1.Decision_DECISION_ALLOW {
		t.Errorf("audit mode with default allow: %v", resp.GetDecision())
	}
}

func TestRequestBytesLimit(t *testing.T) {
	reg := NewRegistry()
	e := NewExecution("x1", compile(t, testPolicy), make(chan *executorv1.NetworkEvent, 8))
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	req := httpReq(1, "10.88.0.2", "GET", "api.stripe.com", "/v1/products")
	req.GetHttp().ContentLength = 101
	if resp := ask(t, s, req); resp.GetRuleId() != "limits.max_request_bytes" {
		t.Errorf("body over max_request_bytes: %v by %q", resp.GetDecision(), resp.GetRuleId())
	}
}

func TestFullEventBufferDropsButLogKeepsAll(t *testing.T) {
	reg := NewRegistry()
	e := NewExecution("x1", compile(t, "version: 1\ndefault: allow\n"), make(chan *executorv1.NetworkEvent, 1))
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	for i := range 5 {
		ask(t, s, httpReq(uint64(i+1), "10.88.0.2", "GET", "a.example", "/"))
	}
	sum := e.Summary()
	if len(sum.Log) != 5 || sum.DroppedEvents != 4 || sum.Allowed != 5 {
		t.Errorf("summary: log %d, dropped %d, allowed %d", len(sum.Log), sum.DroppedEvents, sum.Allowed)
	}
}

func TestUnregisterAndConnected(t *testing.T) {
	reg := NewRegistry()
	if reg.Connected() {
		t.Fatal("connected with no stream")
	}
	e := NewExecution("x1", policy.DenyAll(), make(chan *executorv1.NetworkEvent, 1))
	unregister := reg.Register(netip.MustParseAddr("10.88.0.2"), e)
	s := decider(t, reg)
	ask(t, s, httpReq(1, "10.88.0.2", "GET", "a.example", "/"))
	if !reg.Connected() {
		t.Error("not connected while a stream is open")
	}
	unregister()
	if resp := ask(t, s, httpReq(2, "10.88.0.2", "GET", "a.example", "/")); resp.GetRuleId() != "no-execution" {
		t.Errorf("after unregister: %q", resp.GetRuleId())
	}
}
