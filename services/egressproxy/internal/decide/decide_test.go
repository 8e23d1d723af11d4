package decide_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/bound"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decidetest"
)

var testHello = decide.Hello{
	Version:            "test",
	CACertPEM:          []byte("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"),
	TransparentAddress: "0.0.0.0:15001",
	DNSAddress:         "0.0.0.0:15053",
}

func newClient(t *testing.T, addr string, timeout time.Duration) *decide.Client {
	t.Helper()
	return newClientWith(t, addr, decide.Config{Timeout: timeout})
}

// newClientWith runs a client of addr configured by cfg, with the test's
// hello and no log.
func newClientWith(t *testing.T, addr string, cfg decide.Config) *decide.Client {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cfg.Hello, cfg.Log = testHello, slog.New(slog.DiscardHandler)
	c, err := decide.New(conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func waitUp(t *testing.T, c *decide.Client, up bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Connected() != up {
		if time.Now().After(deadline) {
			t.Fatalf("Connected() never became %v", up)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ask(c *decide.Client, method, host string) (decide.Verdict, error) {
	return c.AskHTTP(context.Background(), decide.HTTPQuestion{Method: method, Host: host, Path: "/v1/products"})
}

func TestAskMatchesByID(t *testing.T) {
	f := decidetest.Start(t, decidetest.StripeLike)
	c := newClient(t, f.Addr, 2*time.Second)
	waitUp(t, c, true)

	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			method := "GET"
			want := policyv1.Decision_DECISION_ALLOW
			if i%2 == 1 {
				method, want = "POST", policyv1.Decision_DECISION_DENY
			}
			v, err := ask(c, method, "api.stripe.test")
			if err != nil || v.Decision != want || v.QuestionID == 0 {
				t.Errorf("AskHTTP(%s) = %+v, %v; want %v", method, v, err, want)
			}
		})
	}
	wg.Wait()
}

// TestHelloFirstOnEveryStream kills the stream: the reopened one starts
// with the same hello, and questions are answered on it.
func TestHelloFirstOnEveryStream(t *testing.T) {
	f := decidetest.Start(t, decidetest.StripeLike)
	c := newClient(t, f.Addr, 2*time.Second)
	waitUp(t, c, true)
	// The client is up once it sent its hello; the kill must find the
	// server's side of the stream, which a loaded machine may start later.
	for f.Streams() < 1 {
		time.Sleep(time.Millisecond)
	}
	f.KillStreams()
	// The client retries after 50-100ms; the bound is generous because a
	// loaded machine running -race delays it (seen once at over 5s).
	deadline := time.Now().Add(20 * time.Second)
	for f.Streams() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the stream was never reopened")
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitUp(t, c, true)
	if v, err := ask(c, "GET", "api.stripe.test"); err != nil || v.Decision != policyv1.Decision_DECISION_ALLOW {
		t.Fatalf("after the reconnect: %+v, %v", v, err)
	}
	var hellos int
	for _, r := range f.Received() {
		if h := r.GetHello(); h != nil {
			hellos++
			if h.GetProxyVersion() != "test" || string(h.GetCaCertificatePem()) != string(testHello.CACertPEM) ||
				h.GetTransparentAddress() != "0.0.0.0:15001" || h.GetDnsAddress() != "0.0.0.0:15053" {
				t.Errorf("hello %v", h)
			}
		}
	}
	if hellos != 2 {
		t.Errorf("%d hellos on 2 streams", hellos)
	}
}

func TestNewRefusesHelloWithoutCA(t *testing.T) {
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := decide.New(conn, decide.Config{Hello: decide.Hello{Version: "x"}, Timeout: time.Second, Log: slog.New(slog.DiscardHandler)}); err == nil {
		t.Fatal("a hello without a CA was accepted")
	}
}

// TestReportsArriveUnanswered sends reports between questions: they
// arrive, in order, and the questions around them still get their own
// answers.
func TestReportsArriveUnanswered(t *testing.T) {
	f := decidetest.Start(t, decidetest.StripeLike)
	c := newClient(t, f.Addr, 2*time.Second)
	waitUp(t, c, true)
	v, err := ask(c, "GET", "api.stripe.test")
	if err != nil {
		t.Fatal(err)
	}
	c.ReportOutcome(decide.Outcome{QuestionID: v.QuestionID, StatusCode: 200, BytesReceived: 42, Duration: time.Millisecond})
	c.ReportRefusal(decide.Refusal{SourceIP: netip.MustParseAddr("10.88.0.2"), Destination: netip.MustParseAddrPort("10.88.0.1:22"), Reason: "not HTTP or TLS"})
	if v2, err := ask(c, "POST", "api.stripe.test"); err != nil || v2.Decision != policyv1.Decision_DECISION_DENY {
		t.Fatalf("question after the reports: %+v, %v", v2, err)
	}
	o := f.WaitFor(t, "the outcome", func(r *egressv1.DecideRequest) bool { return r.GetReport().GetOutcome() != nil }).GetReport().GetOutcome()
	if o.GetQuestionId() != v.QuestionID || o.GetStatusCode() != 200 || o.GetBytesReceived() != 42 {
		t.Errorf("outcome %v", o)
	}
	r := f.WaitFor(t, "the refusal", func(r *egressv1.DecideRequest) bool { return r.GetReport().GetRefusal() != nil }).GetReport().GetRefusal()
	if r.GetSourceIp() != "10.88.0.2" || r.GetDestination() != "10.88.0.1:22" || r.GetReason() != "not HTTP or TLS" {
		t.Errorf("refusal %v", r)
	}
}

// TestFieldsBounded asks about a request whose every field is oversized:
// what goes on the wire is bounded, a cut path makes it a violation, and
// the stream stays up.
func TestFieldsBounded(t *testing.T) {
	f := decidetest.Start(t, decidetest.StripeLike)
	c := newClient(t, f.Addr, 2*time.Second)
	waitUp(t, c, true)
	big := strings.Repeat("é", 40<<10) // 80 KiB of two-byte runes
	v, err := c.AskHTTP(context.Background(), decide.HTTPQuestion{
		SourceIP: netip.MustParseAddr("10.88.0.2"), Method: "GET", Scheme: "https", Host: "api.stripe.test" + big,
		Port: 443, Path: "/v1/products/" + big, Query: "q=" + big, Protocol: "HTTP/2", Violation: "",
	})
	if err != nil || v.Decision != policyv1.Decision_DECISION_DENY || v.RuleID != "proxy" {
		t.Fatalf("oversized question: %+v, %v; want denied as a violation", v, err)
	}
	q := f.WaitFor(t, "the question", func(r *egressv1.DecideRequest) bool { return r.GetQuestion().GetHttp() != nil })
	h := q.GetQuestion().GetHttp()
	if len(h.GetHost()) > decide.MaxHostBytes || len(h.GetPath())+len(h.GetQuery()) > decide.MaxTargetBytes ||
		!strings.HasSuffix(h.GetPath(), bound.Marker) || !strings.Contains(h.GetViolation(), "path longer than") {
		t.Errorf("host %d bytes, path %d, query %d, violation %q", len(h.GetHost()), len(h.GetPath()), len(h.GetQuery()), h.GetViolation())
	}
	if n := proto.Size(q); n > decide.MaxMessageBytes/4 {
		t.Errorf("question of %d bytes", n)
	}
	c.ReportOutcome(decide.Outcome{QuestionID: 1, Error: big})
	c.ReportRefusal(decide.Refusal{Reason: big})
	if v, err := ask(c, "GET", "api.stripe.test"); err != nil || v.Decision != policyv1.Decision_DECISION_ALLOW || f.Streams() != 1 {
		t.Fatalf("after oversized messages: %+v, %v, %d streams; want the same stream answering", v, err, f.Streams())
	}
	for _, r := range f.Received() {
		if n := len(r.GetReport().GetOutcome().GetError()) + len(r.GetReport().GetRefusal().GetReason()); n > decide.MaxReasonBytes {
			t.Errorf("report with %d bytes of text", n)
		}
	}
}

func TestNoStreamDenies(t *testing.T) {
	// Nothing listens here: a closed loopback port.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	c := newClient(t, addr, 200*time.Millisecond)
	v, err := ask(c, "GET", "api.stripe.test")
	if !errors.Is(err, decide.ErrUnavailable) || v.Decision != policyv1.Decision_DECISION_DENY ||
		!strings.HasPrefix(v.Reason, "policy decision unavailable: ") {
		t.Fatalf("AskHTTP without stream = %+v, %v; want fail-closed deny", v, err)
	}
}

func TestNoAnswerDenies(t *testing.T) {
	f := decidetest.Start(t, decidetest.StripeLike)
	c := newClient(t, f.Addr, 100*time.Millisecond)
	waitUp(t, c, true)
	start := time.Now()
	v, err := ask(c, "GET", "silent.test")
	if !errors.Is(err, decide.ErrUnavailable) || v.Decision != policyv1.Decision_DECISION_DENY {
		t.Fatalf("AskHTTP unanswered = %+v, %v", v, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("deny took %v", d)
	}
}

func TestStreamGoneDeniesAndReconnects(t *testing.T) {
	f := decidetest.Start(t, decidetest.StripeLike)
	c := newClient(t, f.Addr, 5*time.Second)
	waitUp(t, c, true)

	// A pending question when the stream dies is denied at once, not after
	// the timeout.
	done := make(chan error, 1)
	go func() {
		v, err := ask(c, "GET", "silent.test")
		if err == nil || v.Decision != policyv1.Decision_DECISION_DENY {
			done <- errors.New("not denied")
			return
		}
		done <- nil
	}()
	f.WaitFor(t, "the question", func(r *egressv1.DecideRequest) bool { return r.GetQuestion() != nil })
	f.KillStreams()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("pending question not failed when the stream died")
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := ask(c, "GET", "api.stripe.test")
		if err == nil && v.Decision == policyv1.Decision_DECISION_ALLOW {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never reconnected: %+v %v", v, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
