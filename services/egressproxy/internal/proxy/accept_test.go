package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
)

// emfileListener fails its first n accepts with EMFILE, as a listener does
// when the process is out of descriptors, then accepts for real. reached
// is closed when the first real accept begins.
type emfileListener struct {
	net.Listener
	n       int32
	calls   atomic.Int32
	reached chan struct{}
	once    sync.Once
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.calls.Add(1) <= l.n {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	l.once.Do(func() { close(l.reached) })
	return l.Listener.Accept()
}

// refusalRecorder is a Decider that answers nothing and records refusals.
type refusalRecorder struct {
	mu       sync.Mutex
	refusals []decide.Refusal
}

func (r *refusalRecorder) AskHTTP(context.Context, decide.HTTPQuestion) (decide.Verdict, error) {
	return decide.Verdict{}, errors.New("not asked in this test")
}
func (r *refusalRecorder) AskTLS(context.Context, decide.TLSQuestion) (decide.Verdict, error) {
	return decide.Verdict{}, errors.New("not asked in this test")
}
func (r *refusalRecorder) ReportOutcome(decide.Outcome) {}
func (r *refusalRecorder) ReportRefusal(f decide.Refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refusals = append(r.refusals, f)
}

func (r *refusalRecorder) all() []decide.Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]decide.Refusal(nil), r.refusals...)
}

// serving runs p.Serve on ln until the test ends, and then wants it to
// return nil. The channel it returns is closed when Serve returns.
func serving(t *testing.T, p *Proxy, ln net.Listener) <-chan struct{} {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var err error
	go func() {
		err = p.Serve(ctx, ln)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if err != nil {
			t.Errorf("Serve = %v, want nil after cancel", err)
		}
	})
	return done
}

// TestServeRetriesAcceptErrors checks that Serve survives EMFILE: it
// retries with backoff, counts each failure, reports not accepting while
// it fails, and then serves connections again.
func TestServeRetriesAcceptErrors(t *testing.T) {
	const failures = 6
	real, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &emfileListener{Listener: real, n: failures, reached: make(chan struct{})}
	reg := prometheus.NewRegistry()
	rec := &refusalRecorder{}
	p := New(Config{
		Decider: rec,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) {
			return netip.AddrPort{}, errors.New("test: no original destination")
		},
		Metrics: NewMetrics(reg),
		Log:     slog.New(slog.DiscardHandler),
	})
	if err := p.Accepting(); err != nil {
		t.Fatalf("Accepting before Serve = %v, want nil", err)
	}
	start := time.Now()
	served := serving(t, p, ln)

	select {
	case <-ln.reached:
	case <-served:
		t.Fatal("Serve returned on EMFILE; want it to retry")
	case <-time.After(10 * time.Second):
		t.Fatal("Serve never retried its accept")
	}
	// 5, 10, 20, 40, 80, 160 ms: the backoff doubles from acceptRetryMin.
	var want time.Duration
	for i, b := 0, acceptRetryMin; i < failures; i, b = i+1, min(2*b, acceptRetryMax) {
		want += b
	}
	if took := time.Since(start); took < want {
		t.Errorf("%d failures retried in %v, want at least the backoff's %v", failures, took, want)
	}
	err = p.Accepting()
	if !errors.Is(err, ErrNotAccepting) || !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("Accepting while failing = %v, want ErrNotAccepting wrapping EMFILE", err)
	}
	if got := metricstest.Value(t, reg, "sandpit_egress_accept_errors_total", nil); got != failures {
		t.Errorf("sandpit_egress_accept_errors_total = %v, want %d", got, failures)
	}

	// Accepting works again: a connection is taken and handled (refused
	// here, as it has no original destination).
	c, err := net.Dial("tcp", real.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read = %d, %v; want the proxy to close the connection", n, err)
	}
	if got := len(rec.all()); got != 1 {
		t.Fatalf("%d refusals reported, want 1", got)
	}
	if err := p.Accepting(); err != nil {
		t.Fatalf("Accepting after a successful accept = %v, want nil", err)
	}
}
