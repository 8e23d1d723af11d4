package dns

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"

	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
)

// slowDecider allows, after holding every question until release is
// closed; names starting "limited." are refused as a limiter would.
type slowDecider struct {
	release chan struct{}
	mu      sync.Mutex
	asked   int
}

func (d *slowDecider) AskDNS(_ context.Context, q decide.DNSQuestion) (decide.Verdict, error) {
	if len(q.Name) > 8 && q.Name[:8] == "limited." {
		err := fmt.Errorf("%w: over the rate", decide.ErrRateLimited)
		return decide.Verdict{Decision: policyv1.Decision_DECISION_DENY, RuleID: "proxy", Reason: err.Error()}, err
	}
	d.mu.Lock()
	d.asked++
	d.mu.Unlock()
	<-d.release
	return decide.Verdict{Decision: policyv1.Decision_DECISION_ALLOW, RuleID: "r"}, nil
}

func startLimited(t *testing.T, d Decider, workers int) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{Decider: d, AnswerIP: netip.MustParseAddr("198.18.0.1"), Log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, h, pc, ln, workers) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return pc.LocalAddr().String()
}

func query(t *testing.T, addr, name string) (*dns.Msg, time.Duration) {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, rtt, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return r, rtt
}

func TestRateLimitedQueryIsRefused(t *testing.T) {
	d := &slowDecider{release: make(chan struct{})}
	close(d.release)
	addr := startLimited(t, d, 2)
	if r, _ := query(t, addr, "limited.example."); r.Rcode != dns.RcodeRefused {
		t.Errorf("rate-limited query: %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	if r, _ := query(t, addr, "ok.example."); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("allowed query: %v", r)
	}
}

// With every worker busy and the queue full, a query is answered
// SERVFAIL at once rather than waiting or spawning a goroutine.
func TestBusyPoolAnswersServfailAtOnce(t *testing.T) {
	d := &slowDecider{release: make(chan struct{})}
	var once sync.Once
	release := func() { once.Do(func() { close(d.release) }) }
	addr := startLimited(t, d, 1)
	// Registered after the server's cleanup, so run before it: the
	// workers must be let go for Serve to return.
	t.Cleanup(release)
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := new(dns.Msg)
	m.SetQuestion("held.example.", dns.TypeA)
	b, _ := m.Pack()
	c := &dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	more := new(dns.Msg)
	more.SetQuestion("more.example.", dns.TypeA)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// One held by the worker, the rest fill the queue (some may be
		// lost by the socket buffer: write more until it is full).
		for range 256 {
			if _, err := conn.Write(b); err != nil {
				t.Fatal(err)
			}
		}
		r, rtt, err := c.Exchange(more, addr)
		if err == nil && r.Rcode == dns.RcodeServerFailure {
			t.Logf("SERVFAIL after %s", rtt)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SERVFAIL with the pool full: %v, %v", r, err)
		}
	}
	d.mu.Lock()
	asked := d.asked
	d.mu.Unlock()
	if asked != 1 {
		t.Errorf("%d questions asked at once with one worker, want 1", asked)
	}
	release()
}
