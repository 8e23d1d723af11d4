package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decidetest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dialer"
)

// silentUpstream accepts connections and never answers; it records when
// each is closed by the proxy.
type silentUpstream struct {
	ln       net.Listener
	accepted atomic.Int32
	closed   atomic.Int32
	wg       sync.WaitGroup
}

func startSilent(t *testing.T) *silentUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silentUpstream{ln: ln}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(io.Discard, c) // until the proxy closes it
				s.closed.Add(1)
			})
		}
	})
	t.Cleanup(func() { ln.Close() })
	return s
}

// gateDecider allows every request, after gate is closed when it is set;
// it counts the questions.
type gateDecider struct {
	refusalRecorder
	gate  chan struct{}
	asked atomic.Int32
}

func (g *gateDecider) AskHTTP(ctx context.Context, q decide.HTTPQuestion) (decide.Verdict, error) {
	g.asked.Add(1)
	if g.gate != nil {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return decide.Verdict{Decision: policyv1.Decision_DECISION_DENY}, ctx.Err()
		}
	}
	return decide.Verdict{Decision: policyv1.Decision_DECISION_ALLOW, RuleID: "test"}, nil
}

type plainEnv struct {
	p    *Proxy
	addr string
	reg  *prometheus.Registry
}

// startPlain serves p on loopback as plain HTTP to port 80 (unless
// cfg.OriginalDst says otherwise), every host sent to upstream.
func startPlain(t testing.TB, cfg Config, upstream string) *plainEnv {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := dialer.New(dialer.Config{
		Resolver:  failingResolver{},
		Overrides: map[string]string{"hang.test": upstream, "other.test": upstream, "pinned.test": upstream},
		Allow:     []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	if next := cfg.NewUpstream; next != nil {
		cfg.NewUpstream = func() *http.Transport {
			tr := next()
			tr.DialContext = d.DialContext
			return tr
		}
	} else if cfg.Upstream == nil {
		tr := NewTransport(d.DialContext, nil)
		t.Cleanup(tr.CloseIdleConnections)
		cfg.Upstream = tr
	} else if tr, ok := cfg.Upstream.(*http.Transport); ok {
		tr.DialContext = d.DialContext
	}
	reg := prometheus.NewRegistry()
	cfg.Metrics = NewMetrics(reg)
	cfg.Log = slog.New(slog.DiscardHandler)
	if cfg.OriginalDst == nil {
		cfg.OriginalDst = func(net.Conn) (netip.AddrPort, error) { return netip.MustParseAddrPort("203.0.113.10:80"), nil }
	}
	p := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return &plainEnv{p: p, addr: ln.Addr().String(), reg: reg}
}

// dialFrom connects to the proxy from a loopback source address: each
// one is a sandbox of its own.
func (e *plainEnv) dialFrom(t *testing.T, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawGet sends one GET for host on c and returns the response.
func rawGet(t *testing.T, c net.Conn, host string) *http.Response {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET /v1/x HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}

// TestUpstreamCancelledWhenSandboxCloses: a request waiting on an
// upstream that never answers is cancelled, and its upstream connection
// closed, as soon as the sandbox closes its connection.
func TestUpstreamCancelledWhenSandboxCloses(t *testing.T) {
	up := startSilent(t)
	e := startPlain(t, Config{Decider: &gateDecider{}}, up.ln.Addr().String())
	const n = 8
	var conns []net.Conn
	for range n {
		c := e.dialFrom(t, "127.0.0.1")
		if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: hang.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(t, "the upstream to accept every request", func() bool { return up.accepted.Load() == n })
	if got := up.closed.Load(); got != 0 {
		t.Fatalf("%d upstream connections closed while the sandbox waits, want 0", got)
	}
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "the upstream connections to close", func() bool { return up.closed.Load() == n })
	waitFor(t, "the proxy to drop the sandbox's connections", func() bool { return e.p.ConnsFrom(netip.MustParseAddr("127.0.0.1")) == 0 })
}

// TestPipelinedRequestSurvivesWatch: bytes of a next request that arrive
// while the first waits for upstream are not lost to the close watch.
func TestPipelinedRequestSurvivesWatch(t *testing.T) {
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		fmt.Fprint(w, r.URL.Path)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = up.Serve(ln) }()
	t.Cleanup(func() { up.Close() })
	e := startPlain(t, Config{Decider: &gateDecider{}}, ln.Addr().String())
	c := e.dialFrom(t, "127.0.0.1")
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /one HTTP/1.1\r\nHost: hang.test\r\n\r\nGET /two HTTP/1.1\r\nHost: hang.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for _, want := range []string{"/one", "/two"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, want)
		}
	}
}

// TestResponseHeaderTimeout: an upstream that never answers gets a 502
// after the transport's response-header timeout.
func TestResponseHeaderTimeout(t *testing.T) {
	if DefaultResponseHeaderTimeout <= 0 || NewTransport(nil, nil).ResponseHeaderTimeout != DefaultResponseHeaderTimeout ||
		NewTransport(nil, nil).IdleConnTimeout != DefaultUpstreamIdleTimeout {
		t.Fatal("NewTransport does not set the default upstream bounds")
	}
	up := startSilent(t)
	tr := NewTransport(nil, nil)
	tr.ResponseHeaderTimeout = 300 * time.Millisecond
	t.Cleanup(tr.CloseIdleConnections)
	e := startPlain(t, Config{Decider: &gateDecider{}, Upstream: tr}, up.ln.Addr().String())
	start := time.Now()
	resp := rawGet(t, e.dialFrom(t, "127.0.0.1"), "hang.test")
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	if took := time.Since(start); took < 300*time.Millisecond || took > 4*time.Second {
		t.Fatalf("answered after %v, want about the 300ms timeout", took)
	}
	waitFor(t, "the upstream connection to close", func() bool { return up.closed.Load() == 1 })
}

// TestConnectionsPerSourceBound: over MaxConnsPerSource a source's new
// connection is closed and reported, while another source still gets
// its requests through; a freed slot can be used again.
func TestConnectionsPerSourceBound(t *testing.T) {
	const limit = 4
	up := startSilent(t)
	okUp := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}
	okLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = okUp.Serve(okLn) }()
	t.Cleanup(func() { okUp.Close() })
	dec := &gateDecider{}
	e := startPlain(t, Config{Decider: dec, MaxConnsPerSource: limit}, up.ln.Addr().String())
	// other.test goes to the answering upstream.
	e.p.cfg.Upstream.(*http.Transport).DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if strings.HasPrefix(addr, "other.test:") {
			return (&net.Dialer{}).DialContext(ctx, network, okLn.Addr().String())
		}
		return (&net.Dialer{}).DialContext(ctx, network, up.ln.Addr().String())
	}
	src := netip.MustParseAddr("127.0.0.1")
	var held []net.Conn
	for range limit {
		c := e.dialFrom(t, "127.0.0.1")
		if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: hang.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	waitFor(t, "the source's connections to be tracked", func() bool { return e.p.ConnsFrom(src) == limit })

	over := e.dialFrom(t, "127.0.0.1")
	_ = over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := over.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("over the bound: read %d, %v; want the connection closed", n, err)
	}
	if got := metricstest.Value(t, e.reg, "sandpit_egress_source_limit_total", map[string]string{"limit": "connections"}); got != 1 {
		t.Errorf("source_limit_total{connections} = %v, want 1", got)
	}
	if got := metricstest.Value(t, e.reg, "sandpit_egress_connections_refused_total", map[string]string{"reason": refusedTooManyConns}); got != 1 {
		t.Errorf("connections_refused_total{too_many_connections} = %v, want 1", got)
	}
	refs := dec.all()
	if len(refs) != 1 || refs[0].SourceIP != src || !strings.Contains(refs[0].Reason, "too many connections from this source") {
		t.Fatalf("refusals = %+v, want one for %v naming the bound", refs, src)
	}
	if got := e.p.ConnsFrom(src); got != limit {
		t.Fatalf("%d connections tracked, want %d", got, limit)
	}

	// A neighbouring sandbox is not affected.
	if resp := rawGet(t, e.dialFrom(t, "127.0.0.2"), "other.test"); resp.StatusCode != 200 {
		t.Fatalf("neighbour got %d, want 200", resp.StatusCode)
	}
	// A closed connection frees its slot.
	held[0].Close()
	waitFor(t, "the closed connection to be untracked", func() bool { return e.p.ConnsFrom(src) == limit-1 })
	if resp := rawGet(t, e.dialFrom(t, "127.0.0.1"), "other.test"); resp.StatusCode != 200 {
		t.Fatalf("after a slot was freed: %d, want 200", resp.StatusCode)
	}
}

// TestInFlightPerSourceBound: one bound on a source's requests waiting
// for a verdict, the decide client's: over it a request gets 429 at once,
// naming the bound, without the executor being asked, while another
// source's request is decided and forwarded.
func TestInFlightPerSourceBound(t *testing.T) {
	const limit = 2
	okUp := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}
	okLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = okUp.Serve(okLn) }()
	t.Cleanup(func() { okUp.Close() })
	// The executor never answers about hang.test: its requests stay in
	// flight, well within the decide timeout.
	srv := decidetest.Start(t, func(q *egressv1.Question) *egressv1.DecideResponse {
		if q.GetHttp().GetHost() == "hang.test" {
			return nil
		}
		return decidetest.Allow("test")
	})
	conn, err := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	decideReg := prometheus.NewRegistry()
	client, err := decide.New(conn, decide.Config{Hello: testHello, Timeout: time.Minute, Limits: decide.Limits{HTTPInFlight: limit},
		Metrics: decide.NewMetrics(decideReg), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { client.Run(ctx) })
	waitFor(t, "the decide stream", client.Connected)
	e := startPlain(t, Config{Decider: client}, okLn.Addr().String())
	asked := func() int {
		n := 0
		for _, r := range srv.Received() {
			if r.GetQuestion().GetHttp() != nil {
				n++
			}
		}
		return n
	}
	for range limit {
		c := e.dialFrom(t, "127.0.0.1")
		if _, err := io.WriteString(c, "GET /v1/x HTTP/1.1\r\nHost: hang.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the executor to be asked", func() bool { return asked() == limit })

	start := time.Now()
	resp := rawGet(t, e.dialFrom(t, "127.0.0.1"), "hang.test")
	took := time.Since(start)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), "already waiting for a verdict") ||
		!strings.Contains(string(body), `"code":"rate_limited"`) {
		t.Fatalf("over the bound: %d %s; want 429 naming the bound", resp.StatusCode, body)
	}
	// At once: not after a wait for a slot, nor the decide timeout.
	if took > time.Second {
		t.Errorf("refused after %v, want at once", took)
	}
	if resp := rawGet(t, e.dialFrom(t, "127.0.0.2"), "other.test"); resp.StatusCode != 200 {
		t.Fatalf("neighbour got %d, want 200", resp.StatusCode)
	}
	if got := asked(); got != limit+1 {
		t.Errorf("executor asked %d times, want %d: not about the request over the bound", got, limit+1)
	}
	if got := metricstest.Value(t, decideReg, "sandpit_egress_rate_limited_total", map[string]string{"kind": "http", "limit": "in_flight"}); got != 1 {
		t.Errorf("rate_limited_total{http,in_flight} = %v, want 1", got)
	}
}

// TestCloseSource closes one source's connections and no other's.
func TestCloseSource(t *testing.T) {
	up := startSilent(t)
	e := startPlain(t, Config{Decider: &gateDecider{}}, up.ln.Addr().String())
	a := netip.MustParseAddr("127.0.0.1")
	var mine []net.Conn
	for range 3 {
		c := e.dialFrom(t, "127.0.0.1")
		if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: hang.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		mine = append(mine, c)
	}
	other := e.dialFrom(t, "127.0.0.2")
	if _, err := io.WriteString(other, "GET /slow HTTP/1.1\r\nHost: hang.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "four upstream requests", func() bool { return up.accepted.Load() == 4 })
	if n := e.p.CloseSource(netip.MustParseAddr("::ffff:127.0.0.1")); n != 3 {
		t.Fatalf("CloseSource closed %d, want 3", n)
	}
	for _, c := range mine {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("closed connection: %v", err)
		}
	}
	waitFor(t, "their upstream connections to close", func() bool { return up.closed.Load() == 3 })
	waitFor(t, "the source to be untracked", func() bool { return e.p.ConnsFrom(a) == 0 })
	if got := e.p.ConnsFrom(netip.MustParseAddr("127.0.0.2")); got != 1 {
		t.Fatalf("other source has %d connections, want 1", got)
	}
}
