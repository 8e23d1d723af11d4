package decide

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// fakeDecider stands in for the executor: it allows GETs, denies the rest,
// stays silent for host "silent.test", and records everything it got.
type fakeDecider struct {
	policyv1.UnimplementedPolicyDecisionServiceServer
	mu   sync.Mutex
	got  []*policyv1.DecideRequest
	kill chan struct{}
}

func (f *fakeDecider) Decide(stream grpc.BidiStreamingServer[policyv1.DecideRequest, policyv1.DecideResponse]) error {
	f.mu.Lock()
	kill := f.kill
	f.mu.Unlock()
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			f.mu.Lock()
			f.got = append(f.got, req)
			f.mu.Unlock()
			if h := req.GetHttp(); h != nil {
				if h.GetHost() == "silent.test" {
					continue
				}
				d := policyv1.Decision_DECISION_DENY
				if h.GetMethod() == "GET" {
					d = policyv1.Decision_DECISION_ALLOW
				}
				if err := stream.Send(&policyv1.DecideResponse{Id: req.GetId(), Decision: d, RuleId: "r"}); err != nil {
					errc <- err
					return
				}
			}
		}
	}()
	select {
	case err := <-errc:
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	case <-kill:
		return errors.New("killed")
	}
}

func (f *fakeDecider) received() []*policyv1.DecideRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*policyv1.DecideRequest(nil), f.got...)
}

func startFake(t *testing.T) (*fakeDecider, *grpc.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDecider{kill: make(chan struct{})}
	srv := grpc.NewServer()
	policyv1.RegisterPolicyDecisionServiceServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return f, srv, ln.Addr().String()
}

func newClient(t *testing.T, addr string, timeout time.Duration) *Client {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := New(conn, timeout, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func waitUp(t *testing.T, c *Client, up bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Connected() != up {
		if time.Now().After(deadline) {
			t.Fatalf("Connected() never became %v", up)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ask(c *Client, method, host string) (Verdict, error) {
	return c.AskHTTP(context.Background(), HTTPQuestion{Method: method, Host: host})
}

func TestAskMatchesByID(t *testing.T) {
	f, _, addr := startFake(t)
	c := newClient(t, addr, 2*time.Second)
	waitUp(t, c, true)

	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			method := "GET"
			want := policyv1.Decision_DECISION_ALLOW
			if i%2 == 1 {
				method, want = "POST", policyv1.Decision_DECISION_DENY
			}
			resp, err := ask(c, method, "api.test")
			if err != nil || resp.Decision != want {
				t.Errorf("Ask(%s) = %v, %v; want %v", method, resp, err, want)
			}
		})
	}
	wg.Wait()

	c.ReportOutcome(Outcome{QuestionID: 1, StatusCode: 200})
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := 0
		for _, r := range f.received() {
			if r.GetOutcome() != nil {
				n++
			}
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("outcome report never arrived")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNoStreamDenies(t *testing.T) {
	// Nothing listens here: a closed loopback port.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	c := newClient(t, addr, 200*time.Millisecond)
	resp, err := ask(c, "GET", "api.test")
	if !errors.Is(err, ErrUnavailable) || resp.Decision != policyv1.Decision_DECISION_DENY ||
		!strings.HasPrefix(resp.Reason, "policy decision unavailable: ") {
		t.Fatalf("Ask without stream = %v, %v; want fail-closed deny", resp, err)
	}
}

func TestNoAnswerDenies(t *testing.T) {
	_, _, addr := startFake(t)
	c := newClient(t, addr, 100*time.Millisecond)
	waitUp(t, c, true)
	start := time.Now()
	resp, err := ask(c, "GET", "silent.test")
	if !errors.Is(err, ErrUnavailable) || resp.Decision != policyv1.Decision_DECISION_DENY {
		t.Fatalf("Ask unanswered = %v, %v", resp, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("deny took %v", d)
	}
}

func TestStreamGoneDeniesAndReconnects(t *testing.T) {
	f, _, addr := startFake(t)
	c := newClient(t, addr, 5*time.Second)
	waitUp(t, c, true)

	// A pending question when the stream dies is denied at once, not after
	// the timeout.
	done := make(chan error, 1)
	go func() {
		resp, err := ask(c, "GET", "silent.test")
		if err == nil || resp.Decision != policyv1.Decision_DECISION_DENY {
			done <- errors.New("not denied")
			return
		}
		done <- nil
	}()
	for len(f.received()) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	close(f.kill)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("pending Ask not failed when the stream died")
	}

	// The fake's next stream serves normally (kill is closed, so make a
	// fresh channel for the reopened stream to wait on).
	f.mu.Lock()
	f.kill = make(chan struct{})
	f.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := ask(c, "GET", "api.test")
		if err == nil && resp.Decision == policyv1.Decision_DECISION_ALLOW {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never reconnected: %v %v", resp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
