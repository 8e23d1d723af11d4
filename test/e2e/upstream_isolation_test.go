package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// isolationCode makes keep-alive requests, 4 at a time to each of two
// stand-ins, for about 2 s, each marked with the sandbox's label, and
// prints when it began and ended (ms since the epoch) and the status codes
// it got.
const isolationCode = `
const https = require("https");
const agent = new https.Agent({ keepAlive: true, maxSockets: 4 });
const get = host => new Promise(res => {
  const q = https.request({ host: "198.18.0.1", port: 443, servername: host, path: "/v1/products/p1",
    headers: { Host: host, "X-Sandbox": %q }, agent, timeout: 15000 }, r => { r.resume(); r.on("end", () => res(host + " " + r.statusCode)); });
  q.on("error", e => res(host + " " + e.code)); q.on("timeout", () => { q.destroy(); res(host + " timeout"); }); q.end();
});
const out = { start: Date.now(), codes: {} };
const end = out.start + 2000;
const loop = async host => { while (Date.now() < end) { const c = await get(host); out.codes[c] = (out.codes[c] || 0) + 1; } };
Promise.all(["pay.test", "api.github.test"].flatMap(h => [loop(h), loop(h), loop(h), loop(h)])).then(() => { out.end = Date.now(); console.log(JSON.stringify(out)); });
`

// connLedger is a stand-in upstream that records, for each of its
// connections, which sandboxes' requests it carried (their X-Sandbox
// header) and when it closed.
type connLedger struct {
	srv *httptest.Server

	mu       sync.Mutex
	carried  map[string]map[string]int // remote address -> sandbox -> requests
	closedAt map[string]time.Time
}

func newConnLedger(t *testing.T, h2 bool) *connLedger {
	t.Helper()
	l := &connLedger{carried: map[string]map[string]int{}, closedAt: map[string]time.Time{}}
	l.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		if l.carried[r.RemoteAddr] == nil {
			l.carried[r.RemoteAddr] = map[string]int{}
		}
		l.carried[r.RemoteAddr][r.Header.Get("X-Sandbox")+" "+r.Proto]++
		l.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"proto":%q}`, r.Proto)
	}))
	l.srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			l.mu.Lock()
			l.closedAt[c.RemoteAddr().String()] = time.Now()
			l.mu.Unlock()
		}
	}
	l.srv.EnableHTTP2 = h2
	l.srv.TLS = &tls.Config{Certificates: []tls.Certificate{upstreamCert(t)}}
	l.srv.StartTLS()
	t.Cleanup(l.srv.Close)
	return l
}

// connsOf returns the connections that carried sandbox's requests, and
// the ones of them that also carried another sandbox's.
func (l *connLedger) connsOf(sandbox string) (conns, shared []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for addr, by := range l.carried {
		mine := false
		for k := range by {
			mine = mine || strings.HasPrefix(k, sandbox+" ")
		}
		if !mine {
			continue
		}
		conns = append(conns, addr)
		if len(by) > 1 {
			shared = append(shared, fmt.Sprintf("%s carried %v", addr, by))
		}
	}
	return conns, shared
}

// lastClose returns when the last of conns closed.
func (l *connLedger) lastClose(conns []string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var last time.Time
	for _, c := range conns {
		if at := l.closedAt[c]; at.After(last) {
			last = at
		}
	}
	return last
}

// openAfter returns the connections of conns not closed by t.
func (l *connLedger) openAfter(conns []string, t time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var open []string
	for _, c := range conns {
		if at, ok := l.closedAt[c]; !ok || at.After(t) {
			open = append(open, c)
		}
	}
	return open
}

// TestUpstreamConnectionsPerExecution runs two sandboxes at once, each
// making keep-alive requests to an HTTP/2 and an HTTP/1.1 stand-in: no
// upstream connection carries requests of both, and each sandbox's
// upstream connections are closed within 2 s of its execution ending.
func TestUpstreamConnectionsPerExecution(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy)})
	h2, h1 := newConnLedger(t, true), newConnLedger(t, false)
	proxy := startProxy(t, ports, e.deciderAddr, map[string]string{"pay.test": h2.srv.Listener.Addr().String(), "api.github.test": h1.srv.Listener.Addr().String()}, upstreamCAPEM(t))
	e.waitProxy(t, proxy)

	sandboxes := []string{"a", "b"}
	runs := make([]*run, len(sandboxes))
	ended := make([]time.Time, len(sandboxes))
	var wg sync.WaitGroup
	for i, name := range sandboxes {
		wg.Go(func() {
			runs[i] = e.execute(context.Background(), code(fmt.Sprintf(isolationCode, name)))
			ended[i] = time.Now()
		})
	}
	wg.Wait()
	type isolationOut struct {
		Start, End int64
		Codes      map[string]int
	}
	outs := make([]isolationOut, len(runs))
	for i, r := range runs {
		if r.err != nil || r.result == nil {
			t.Fatalf("sandbox %s: %v, result %v\nstderr: %s", sandboxes[i], r.err, r.result, r.stderr)
		}
		if err := json.Unmarshal(bytes.TrimSpace(r.stdout), &outs[i]); err != nil {
			t.Fatalf("sandbox %s output: %v\n%s\nstderr: %s", sandboxes[i], err, r.stdout, r.stderr)
		}
		t.Logf("sandbox %s: %v", sandboxes[i], outs[i].Codes)
		for _, want := range []string{"pay.test 200", "api.github.test 200"} {
			if outs[i].Codes[want] < 2 {
				t.Errorf("sandbox %s got %d %q, want several: %v", sandboxes[i], outs[i].Codes[want], want, outs[i].Codes)
			}
		}
	}
	// Both made requests at once: each began before the other ended.
	if outs[0].Start >= outs[1].End || outs[1].Start >= outs[0].End {
		t.Fatalf("the sandboxes did not overlap: a %d-%d, b %d-%d", outs[0].Start, outs[0].End, outs[1].Start, outs[1].End)
	}

	for _, up := range []struct {
		proto string
		l     *connLedger
	}{{"HTTP/2", h2}, {"HTTP/1.1", h1}} {
		for i, name := range sandboxes {
			conns, shared := up.l.connsOf(name)
			t.Logf("%s stand-in: sandbox %s used %d upstream connections", up.proto, name, len(conns))
			if len(conns) == 0 {
				t.Errorf("%s stand-in: no request of sandbox %s arrived", up.proto, name)
			}
			if len(shared) > 0 {
				t.Errorf("%s stand-in: upstream connections shared between sandboxes: %v", up.proto, shared)
			}
			// Closed within 2 s of the execution's end (polled, since the
			// release notice and the close race the test's clock).
			limit := ended[i].Add(2 * time.Second)
			for time.Now().Before(limit) && len(up.l.openAfter(conns, limit)) > 0 {
				time.Sleep(20 * time.Millisecond)
			}
			if open := up.l.openAfter(conns, limit); len(open) > 0 {
				t.Errorf("%s stand-in: sandbox %s's upstream connections %v still open 2s after its execution ended", up.proto, name, open)
				continue
			}
			t.Logf("%s stand-in: sandbox %s's last upstream connection closed %v before its Execute stream ended (negative: after)", up.proto, name, ended[i].Sub(up.l.lastClose(conns)).Round(time.Millisecond))
		}
	}
}
