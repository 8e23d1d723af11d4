package decision

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/bound"
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

func compile(t testing.TB, y string) *policy.Compiled {
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

// testCA is a CA certificate, PEM, for hellos.
var testCA = newCAPEM("decision test CA")

func newCAPEM(name string) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

type stream = grpc.BidiStreamingClient[egressv1.DecideRequest, egressv1.DecideResponse]

// serve serves the service on loopback, with the receive limit the real
// listener has, and returns a client connection to it.
func serve(t *testing.T, reg *Registry) *grpc.ClientConn {
	t.Helper()
	return serveMetrics(t, reg, nil)
}

// serveMetrics is serve with the service's metrics registered on m.
func serveMetrics(t *testing.T, reg *Registry, m prometheus.Registerer) *grpc.ClientConn {
	t.Helper()
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(MaxMessageBytes))
	egressv1.RegisterDecisionServiceServer(srv, NewService(reg, m, slog.New(slog.NewTextHandler(io.Discard, nil))))
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
	return conn
}

// open opens a Decide stream without saying anything on it.
func open(t *testing.T, conn *grpc.ClientConn) stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := egressv1.NewDecisionServiceClient(conn).Decide(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hello(ca []byte) *egressv1.DecideRequest {
	return &egressv1.DecideRequest{Kind: &egressv1.DecideRequest_Hello{Hello: &egressv1.Hello{
		ProxyVersion: "test", CaCertificatePem: ca, TransparentAddress: "0.0.0.0:15001", DnsAddress: "0.0.0.0:15053",
	}}}
}

// decider serves the service on loopback and returns a Decide stream that
// has said hello, once the service has taken it.
func decider(t *testing.T, reg *Registry) stream {
	t.Helper()
	s := open(t, serve(t, reg))
	if err := s.Send(hello(testCA)); err != nil {
		t.Fatal(err)
	}
	waitConnected(t, reg, true)
	return s
}

func waitConnected(t *testing.T, reg *Registry, want bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for reg.Connected() != want {
		if time.Now().After(deadline) {
			t.Fatalf("Connected() never became %v", want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ask(t *testing.T, s stream, req *egressv1.DecideRequest) *egressv1.DecideResponse {
	t.Helper()
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetId() != req.GetQuestion().GetId() {
		t.Fatalf("response id %d for question %d", resp.GetId(), req.GetQuestion().GetId())
	}
	return resp
}

func question(id uint64, q any) *egressv1.DecideRequest {
	qq := &egressv1.Question{Id: id}
	switch q := q.(type) {
	case *egressv1.HttpRequest:
		qq.Kind = &egressv1.Question_Http{Http: q}
	case *egressv1.DnsQuery:
		qq.Kind = &egressv1.Question_Dns{Dns: q}
	case *egressv1.TlsServerName:
		qq.Kind = &egressv1.Question_Tls{Tls: q}
	}
	return &egressv1.DecideRequest{Kind: &egressv1.DecideRequest_Question{Question: qq}}
}

func report(r any) *egressv1.DecideRequest {
	rr := &egressv1.Report{}
	switch r := r.(type) {
	case *egressv1.Outcome:
		rr.Kind = &egressv1.Report_Outcome{Outcome: r}
	case *egressv1.Refusal:
		rr.Kind = &egressv1.Report_Refusal{Refusal: r}
	}
	return &egressv1.DecideRequest{Kind: &egressv1.DecideRequest_Report{Report: rr}}
}

func httpReq(id uint64, src, method, host, path string) *egressv1.DecideRequest {
	return question(id, &egressv1.HttpRequest{
		SourceIp: src, Method: method, Scheme: "https", Host: host, Port: 443, Path: path, ContentLength: -1,
	})
}

func dnsReq(id uint64, src, name string) *egressv1.DecideRequest {
	return question(id, &egressv1.DnsQuery{SourceIp: src, Name: name, Type: "A"})
}

func TestDecideByExecutionPolicy(t *testing.T) {
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, 64)
	e := NewExecution("x1", compile(t, testPolicy), events)
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)

	tests := []struct {
		req  *egressv1.DecideRequest
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
			t.Errorf("question %d: %v by %q, want %v by %q (%s)", resp.GetId(), resp.GetDecision(), resp.GetRuleId(), tt.want, tt.rule, resp.GetReason())
		}
		// The proxy enforces the body limit on what it forwards.
		if want := map[bool]uint64{true: 100, false: 0}[tt.want == policyv1.Decision_DECISION_ALLOW]; resp.GetMaxRequestBytes() != want {
			t.Errorf("question %d: max_request_bytes %d, want %d", resp.GetId(), resp.GetMaxRequestBytes(), want)
		}
	}
	// The fourth request of x1 exceeds max_requests: 3.
	if resp := ask(t, s, httpReq(5, "10.88.0.2", "GET", "api.stripe.com", "/v1/products/prod_1")); resp.GetRuleId() != "limits.max_requests" {
		t.Errorf("request over max_requests: %v by %q", resp.GetDecision(), resp.GetRuleId())
	}

	if err := s.Send(report(&egressv1.Outcome{QuestionId: 1, StatusCode: 200, BytesReceived: 42})); err != nil {
		t.Fatal(err)
	}
	// A DNS answer after the outcome proves the outcome was handled.
	dns := ask(t, s, dnsReq(7, "10.88.0.2", "api.stripe.com"))
	if dns.GetDecision() != policyv1.Decision_DECISION_ALLOW {
		t.Errorf("DNS for a policy host: %v", dns.GetDecision())
	}
	if dns := ask(t, s, dnsReq(8, "10.88.0.2", "evil.example")); dns.GetDecision() != policyv1.Decision_DECISION_DENY {
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
	req.GetQuestion().GetHttp().Violation = "Host a.example does not match the TLS server name b.example"
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
	req.GetQuestion().GetHttp().ContentLength = 101
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
	// The proxy is told to close what the ended execution still has open.
	notice, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if notice.GetRelease().GetSourceIp() != "10.88.0.2" || notice.GetId() != 0 || notice.GetDecision() != policyv1.Decision_DECISION_UNSPECIFIED {
		t.Fatalf("after unregister: %v, want a bare Release of 10.88.0.2", notice)
	}
	// Unregistering twice releases nothing more.
	unregister()
	if resp := ask(t, s, httpReq(2, "10.88.0.2", "GET", "a.example", "/")); resp.GetRuleId() != "no-execution" {
		t.Errorf("after unregister: %q", resp.GetRuleId())
	}
}

// TestHelloRequired closes a stream whose first message is not a hello,
// one that says hello twice, and one whose hello carries no CA.
func TestHelloRequired(t *testing.T) {
	reg := NewRegistry()
	conn := serve(t, reg)
	notCA := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("x")})
	tests := []struct {
		name string
		msgs []*egressv1.DecideRequest
		want string
	}{
		{"question first", []*egressv1.DecideRequest{httpReq(1, "10.88.0.2", "GET", "a.example", "/")}, "must be a hello"},
		{"report first", []*egressv1.DecideRequest{report(&egressv1.Refusal{SourceIp: "10.88.0.2", Reason: "x"})}, "must be a hello"},
		{"hello twice", []*egressv1.DecideRequest{hello(testCA), hello(testCA)}, "only the first"},
		{"no CA", []*egressv1.DecideRequest{hello(nil)}, "no PEM certificate"},
		{"not a certificate", []*egressv1.DecideRequest{hello(notCA)}, "PRIVATE KEY block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, conn)
			for _, m := range tt.msgs {
				if err := s.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			_, err := s.Recv()
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Recv: %v, want InvalidArgument saying %q", err, tt.want)
			}
		})
	}
	if reg.Connected() {
		t.Error("a stream without a valid hello counts as connected")
	}
}

// TestCAFromHello keeps the CA of the proxy that said hello last, and
// falls back to an older stream's when the newer one ends.
func TestCAFromHello(t *testing.T) {
	reg := NewRegistry()
	if _, ok := reg.Proxy(); ok {
		t.Fatal("a proxy before any hello")
	}
	conn := serve(t, reg)
	first := open(t, conn)
	if err := first.Send(hello(testCA)); err != nil {
		t.Fatal(err)
	}
	waitConnected(t, reg, true)
	px, _ := reg.Proxy()
	if string(px.CAPEM) != string(testCA) || px.Version != "test" || px.TransparentAddress != "0.0.0.0:15001" || len(px.CASHA256) != 64 {
		t.Fatalf("proxy %+v", px)
	}

	otherCA := newCAPEM("another test CA")
	second := open(t, conn)
	if err := second.Send(hello(otherCA)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for px, _ := reg.Proxy(); string(px.CAPEM) != string(otherCA); px, _ = reg.Proxy() {
		if time.Now().After(deadline) {
			t.Fatal("the newer proxy's CA never took over")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := second.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for px, _ := reg.Proxy(); string(px.CAPEM) != string(testCA); px, _ = reg.Proxy() {
		if time.Now().After(deadline) {
			t.Fatal("the older stream's CA did not come back when the newer stream ended")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := first.CloseSend(); err != nil {
		t.Fatal(err)
	}
	waitConnected(t, reg, false)
	if _, ok := reg.Proxy(); ok {
		t.Error("a proxy after every stream ended")
	}
}

// TestQuestionsAnsweredOnceReportsNot interleaves reports with questions:
// every question is answered exactly once, in order, and no report is.
func TestQuestionsAnsweredOnceReportsNot(t *testing.T) {
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, 64)
	e := NewExecution("x1", compile(t, "version: 1\ndefault: allow\n"), events)
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	msgs := []*egressv1.DecideRequest{
		httpReq(10, "10.88.0.2", "GET", "a.example", "/1"),
		report(&egressv1.Outcome{QuestionId: 10, StatusCode: 204}),
		report(&egressv1.Refusal{SourceIp: "10.88.0.2", Destination: "10.88.0.1:22", Reason: "not HTTP or TLS"}),
		dnsReq(11, "10.88.0.2", "a.example"),
		report(&egressv1.Outcome{QuestionId: 999, StatusCode: 200}), // no such question: ignored
		httpReq(12, "10.88.0.9", "GET", "a.example", "/2"),
	}
	for _, m := range msgs {
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []uint64{10, 11, 12} {
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetId() != want {
			t.Fatalf("answer for %d, want %d", resp.GetId(), want)
		}
	}
	// Nothing more: a question sent now gets the next answer.
	if resp := ask(t, s, dnsReq(13, "10.88.0.2", "a.example")); resp.GetId() != 13 {
		t.Fatalf("answer %d", resp.GetId())
	}
	sum := e.Summary()
	if len(sum.Log) != 1 || sum.Log[0].GetStatusCode() != 204 {
		t.Errorf("log %v, want the request with its outcome", sum.Log)
	}
	var refused int
	for len(events) > 0 {
		if ev := <-events; ev.GetKind() == executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED {
			refused++
			if ev.GetUrl() != "10.88.0.1:22" || ev.GetReason() != "not HTTP or TLS" {
				t.Errorf("refusal event %v", ev)
			}
		}
	}
	if refused != 1 {
		t.Errorf("%d refusal events, want 1", refused)
	}
}

// TestViolationStatusInLog records a request the proxy refused over a size
// bound with the status the sandbox got.
func TestViolationStatusInLog(t *testing.T) {
	reg := NewRegistry()
	e := NewExecution("x1", compile(t, "version: 1\ndefault: allow\n"), make(chan *executorv1.NetworkEvent, 8))
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	req := httpReq(1, "10.88.0.2", "GET", "a.example", "/")
	req.GetQuestion().GetHttp().Violation = "request header fields of 1048650 bytes are over the proxy's limit of 65536"
	req.GetQuestion().GetHttp().ViolationStatus = 431
	if resp := ask(t, s, req); resp.GetDecision() != policyv1.Decision_DECISION_DENY || resp.GetRuleId() != "proxy" {
		t.Fatalf("violation: %v by %q", resp.GetDecision(), resp.GetRuleId())
	}
	sum := e.Summary()
	if len(sum.Log) != 1 || sum.Log[0].GetStatusCode() != 431 || !sum.Log[0].GetBlocked() || sum.Blocked != 1 {
		t.Fatalf("summary %+v", sum)
	}
}

// TestNetworkLogBounds fills executions with 20,000 requests and builds
// the Result their network logs go into: with the longest fields the proxy
// may send, the byte bound holds the Result under a client's default
// 4 MiB receive limit; with short ones, the entry bound does. Either way
// the Result says how much was left out.
func TestNetworkLogBounds(t *testing.T) {
	const n = 20000
	long := strings.Repeat("/é", 4<<10) // 12 KiB of path, two-byte runes
	tests := []struct {
		name    string
		req     *egressv1.HttpRequest
		maxLog  int
		cutURLs bool
	}{
		{"long fields", &egressv1.HttpRequest{
			SourceIp: "10.88.0.2", Method: strings.Repeat("M", 32), Scheme: "https", Host: strings.Repeat("h", 253), Port: 8443,
			Path: long[:8<<10], Query: "", ContentLength: -1, Protocol: "HTTP/2",
			Violation: strings.Repeat("v", 1<<10), ViolationStatus: 431,
		}, maxLogEntries, true},
		{"short fields", &egressv1.HttpRequest{
			SourceIp: "10.88.0.2", Method: "GET", Scheme: "https", Host: "a.example", Port: 443, Path: "/", ContentLength: -1,
		}, maxLogEntries, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := NewRegistry()
			events := make(chan *executorv1.NetworkEvent, 256)
			e := NewExecution("x1", compile(t, "version: 1\ndefault: allow\n"), events)
			defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
			svc := NewService(reg, nil, slog.New(slog.DiscardHandler))
			for i := range n {
				resp, p := svc.answer(&egressv1.Question{Id: uint64(i + 1), Kind: &egressv1.Question_Http{Http: tt.req}})
				if p.exec != nil && resp.GetDecision() == policyv1.Decision_DECISION_ALLOW {
					// Each allowed request has an outcome event too.
					p.exec.outcome(p, &egressv1.Outcome{QuestionId: resp.GetId(), StatusCode: 599, Error: strings.Repeat("e", 1<<10)})
				}
			}
			sum := e.Summary()
			res := &executorv1.Result{
				Termination: executorv1.Termination_TERMINATION_TIMEOUT, ExitCode: 137, Signal: "SIGKILL",
				TimedOut: true, OomKilled: true, OutputTruncated: true,
				WallTime: durationpb.New(5 * time.Minute), CpuTime: durationpb.New(10 * time.Minute),
				PeakMemoryBytes: 2 << 30, StdoutBytes: 64 << 20, StderrBytes: 64 << 20,
				RequestsAllowed: sum.Allowed, RequestsBlocked: sum.Blocked,
				NetworkLog:           sum.Log,
				NetworkError:         strings.Repeat("x", 1<<10),
				NetworkEventsDropped: sum.DroppedEvents,
				NetworkLogTruncated:  sum.LogTruncated,
				NetworkLogOmitted:    sum.LogOmitted,
			}
			b, err := proto.Marshal(&executorv1.ExecuteResponse{Event: &executorv1.ExecuteResponse_Result{Result: res}})
			if err != nil {
				t.Fatal(err) // invalid UTF-8 from a cut in the middle of a rune would fail here
			}
			if len(b) >= 4<<20 {
				t.Errorf("Result of %d bytes, want under 4 MiB", len(b))
			}
			if len(sum.Log) == 0 || len(sum.Log) > tt.maxLog || sum.LogOmitted != uint32(n-len(sum.Log)) || !sum.LogTruncated ||
				sum.Allowed+sum.Blocked != n || sum.DroppedEvents != n+sum.Allowed-uint32(cap(events)) {
				t.Errorf("log %d entries, omitted %d, truncated %v, allowed %d + blocked %d, dropped %d events",
					len(sum.Log), sum.LogOmitted, sum.LogTruncated, sum.Allowed, sum.Blocked, sum.DroppedEvents)
			}
			for _, l := range sum.Log {
				if len(l.GetUrl()) > maxURLBytes || len(l.GetReason()) > maxLogReasonBytes || strings.HasSuffix(l.GetUrl(), bound.Marker) != tt.cutURLs {
					t.Fatalf("entry with a url of %d bytes, a reason of %d: %.80q", len(l.GetUrl()), len(l.GetReason()), l.GetUrl())
				}
				if tt.cutURLs && l.GetStatusCode() != 431 {
					t.Fatalf("entry with status %d, want the proxy's 431", l.GetStatusCode())
				}
			}
			t.Logf("%d entries, %d omitted, %d events dropped, Result %d bytes", len(sum.Log), sum.LogOmitted, sum.DroppedEvents, len(b))
		})
	}
}

func TestNetworkLogWithinBoundsIsWhole(t *testing.T) {
	reg := NewRegistry()
	e := NewExecution("x1", compile(t, "version: 1\ndefault: allow\n"), make(chan *executorv1.NetworkEvent, 8))
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	for i := range 3 {
		ask(t, s, httpReq(uint64(i+1), "10.88.0.2", "GET", "a.example", "/"))
	}
	if sum := e.Summary(); len(sum.Log) != 3 || sum.LogOmitted != 0 || sum.LogTruncated || sum.DroppedEvents != 0 {
		t.Errorf("summary %+v", sum)
	}
}

// TestRateLimitedCounted: requests and queries the proxy refused by its
// per-source limits are counted in the Result (requests in blocked too),
// stay out of the network log, and become an event only when the proxy
// sampled a reason for them.
func TestRateLimitedCounted(t *testing.T) {
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, 64)
	e := NewExecution("x1", compile(t, "version: 1\ndefault: allow\n"), events)
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	const reason = "rate limited: 1 http questions refused within 1s: source 10.88.0.2 over 100 http questions per second (burst 200)"
	if resp := ask(t, s, httpReq(1, "10.88.0.2", "GET", "a.example", "/1")); resp.GetId() != 1 {
		t.Fatalf("answer %d", resp.GetId())
	}
	for _, m := range []*egressv1.DecideRequest{
		report(&egressv1.Refusal{SourceIp: "10.88.0.2", Reason: reason, RateLimitedRequests: 1}),
		report(&egressv1.Refusal{SourceIp: "10.88.0.2", RateLimitedRequests: 41}),
		report(&egressv1.Refusal{SourceIp: "10.88.0.2", RateLimitedDnsQueries: 7}),
		report(&egressv1.Refusal{SourceIp: "10.88.0.9", RateLimitedRequests: 1000}), // no execution: ignored
	} {
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	// Reports are handled in order, before the next question's answer.
	if resp := ask(t, s, dnsReq(2, "10.88.0.2", "a.example")); resp.GetId() != 2 {
		t.Fatalf("answer %d", resp.GetId())
	}
	sum := e.Summary()
	if sum.Allowed != 1 || sum.Blocked != 42 || sum.RateLimited != 42 || sum.DNSRateLimited != 7 || len(sum.Log) != 1 {
		t.Errorf("summary %+v, want 1 allowed, 42 blocked of which 42 rate limited, 7 DNS queries, one log entry", sum)
	}
	var refused []string
	for len(events) > 0 {
		if ev := <-events; ev.GetKind() == executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED {
			refused = append(refused, ev.GetReason())
		}
	}
	if len(refused) != 1 || refused[0] != reason {
		t.Errorf("refused events %q, want the one sampled", refused)
	}
}

// TestStreamClosedEndsOutstandingRequests closes the proxy's stream with an
// allowed request still waiting for its outcome: its log entry and an
// outcome event say the outcome will not come, and a request whose outcome
// arrived is left as it was.
func TestStreamClosedEndsOutstandingRequests(t *testing.T) {
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, 64)
	e := NewExecution("x1", compile(t, "version: 1\ndefault: allow\n"), events)
	e.UseLogBudget(NewLogBudget(0))
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	conn := serve(t, reg)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := egressv1.NewDecisionServiceClient(conn).Decide(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(hello(testCA)); err != nil {
		t.Fatal(err)
	}
	ask(t, s, httpReq(1, "10.88.0.2", "GET", "a.example", "/done"))
	if err := s.Send(report(&egressv1.Outcome{QuestionId: 1, StatusCode: 200})); err != nil {
		t.Fatal(err)
	}
	ask(t, s, httpReq(2, "10.88.0.2", "GET", "a.example", "/cut"))
	before := e.budget.Used()
	cancel()
	waitConnected(t, reg, false)

	sum := e.Summary()
	if len(sum.Log) != 2 {
		t.Fatalf("log %v", sum.Log)
	}
	if done := sum.Log[0]; done.GetStatusCode() != 200 || done.GetReason() != "" {
		t.Errorf("request with its outcome: %v", done)
	}
	if cut := sum.Log[1]; cut.GetStatusCode() != 0 || cut.GetReason() != outcomeLost || cut.GetBlocked() {
		t.Errorf("request cut with the stream: %v, want reason %q", cut, outcomeLost)
	}
	if got := e.budget.Used() - before; got != int64(len(outcomeLost)+2) {
		t.Errorf("the reason took %d bytes of the log budget, want %d", got, len(outcomeLost)+2)
	}
	var lost []*executorv1.NetworkEvent
	for len(events) > 0 {
		if ev := <-events; ev.GetKind() == executorv1.NetworkEventKind_NETWORK_EVENT_KIND_OUTCOME && ev.GetError() != "" {
			lost = append(lost, ev)
		}
	}
	if len(lost) != 1 || lost[0].GetUrl() != "https://a.example/cut" || lost[0].GetError() != outcomeLost || lost[0].GetDuration() == nil {
		t.Errorf("outcome events with an error: %v, want one for /cut", lost)
	}
}
