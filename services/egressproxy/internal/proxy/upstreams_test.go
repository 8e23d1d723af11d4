package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"
)

// connRecorder is an upstream that records which source's requests each
// of its connections carried (the X-Source header the test sends) and
// which connections closed.
type connRecorder struct {
	srv *httptest.Server

	mu      sync.Mutex
	sources map[string]map[string]bool // remote addr -> sources
	closed  map[string]bool
}

func startConnRecorder(t *testing.T) *connRecorder {
	t.Helper()
	r := &connRecorder{sources: map[string]map[string]bool{}, closed: map[string]bool{}}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		if r.sources[req.RemoteAddr] == nil {
			r.sources[req.RemoteAddr] = map[string]bool{}
		}
		r.sources[req.RemoteAddr][req.Header.Get("X-Source")] = true
		r.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	r.srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			r.mu.Lock()
			r.closed[c.RemoteAddr().String()] = true
			r.mu.Unlock()
		}
	}
	r.srv.Start()
	t.Cleanup(r.srv.Close)
	return r
}

// connsOf returns the upstream connections that carried src's requests,
// and whether any of them also carried another source's.
func (r *connRecorder) connsOf(src string) (conns []string, shared bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for addr, srcs := range r.sources {
		if srcs[src] {
			conns = append(conns, addr)
			shared = shared || len(srcs) > 1
		}
	}
	return conns, shared
}

func (r *connRecorder) allClosed(conns []string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range conns {
		if !r.closed[c] {
			return false
		}
	}
	return true
}

// getAs sends keep-alive GETs for hang.test on c, marked as from src.
func getAs(t *testing.T, c net.Conn, src string, n int) {
	t.Helper()
	for range n {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(c, "GET /v1/x HTTP/1.1\r\nHost: hang.test\r\nX-Source: %s\r\n\r\n", src); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200", resp.StatusCode)
		}
	}
}

// TestUpstreamPerSource: with NewUpstream, two sources asking for the same
// upstream one after another never share an upstream connection, and a
// source's connections close when it is released or its last sandbox
// connection ends. The control, one shared transport, shows the same
// sequence does share.
func TestUpstreamPerSource(t *testing.T) {
	tests := []struct {
		name      string
		perSource bool
	}{{"per source", true}, {"shared (control)", false}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startConnRecorder(t)
			cfg := Config{Decider: &gateDecider{}}
			if tt.perSource {
				cfg.NewUpstream = func() *http.Transport { return NewTransport(nil, nil) }
			}
			e := startPlain(t, cfg, up.srv.Listener.Addr().String())
			a, b := e.dialFrom(t, "127.0.0.1"), e.dialFrom(t, "127.0.0.2")
			getAs(t, a, "a", 3)
			getAs(t, b, "b", 3)
			getAs(t, a, "a", 1)
			connsA, sharedA := up.connsOf("a")
			connsB, _ := up.connsOf("b")
			if !tt.perSource {
				if !sharedA {
					t.Fatalf("control: a shared transport gave a %v and b %v, want a connection carrying both", connsA, connsB)
				}
				return
			}
			if sharedA || len(connsA) == 0 || len(connsB) == 0 {
				t.Fatalf("a's upstream connections %v, b's %v: want disjoint", connsA, connsB)
			}
			if n := e.p.UpstreamsOpen(); n != 2 {
				t.Fatalf("%d upstream transports, want 2", n)
			}
			e.p.CloseSource(netip.MustParseAddr("127.0.0.2"))
			waitFor(t, "b's upstream connections to close", func() bool { return up.allClosed(connsB) })
			if up.allClosed(connsA) {
				t.Fatal("releasing b closed a's upstream connections")
			}
			waitFor(t, "b's transport to go", func() bool { return e.p.UpstreamsOpen() == 1 })
			a.Close()
			waitFor(t, "a's upstream connections to close with its last connection", func() bool { return up.allClosed(connsA) })
			waitFor(t, "a's transport to go", func() bool { return e.p.UpstreamsOpen() == 0 })
		})
	}
}

// TestUpstreamTransportMemory reports what one idle per-source transport
// costs once it has carried a request and lost its connections: what a
// source that holds a connection to the proxy but sends nothing keeps.
func TestUpstreamTransportMemory(t *testing.T) {
	up := startConnRecorder(t)
	const n = 200
	var ts []*http.Transport
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range n {
		tr := NewTransport((&net.Dialer{}).DialContext, nil)
		resp, err := tr.RoundTrip(httptestRequest(t, up.srv.URL))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		ts = append(ts, newSourceUpstream(tr).rt)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("one idle upstream transport: about %d bytes of heap (%d transports)", per, len(ts))
	// NewTransport's settings hold no buffers until a connection needs
	// one; a few KiB each is the documented figure (README).
	if per > 16<<10 {
		t.Fatalf("an idle transport holds %d bytes, over 16 KiB", per)
	}
	runtime.KeepAlive(ts)
}

func httptestRequest(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
