package e2e

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// The policy of the WebSocket and rate-limit tests: WebSockets to three
// paths of api.github.test, whose stand-in speaks WebSocket, plain
// requests to pay.test; every request body, and so everything a sandbox
// sends on a WebSocket, is bounded to 64 KiB.
const wsLimitPolicy = `
version: 1
default: deny
limits: { max_request_bytes: 64KiB }
hosts:
  - host: api.github.test
    rules:
      - { id: ws-echo, methods: [GET], path: /echo, action: allow, websocket: true }
      - { id: ws-flood, methods: [GET], path: /flood, action: allow, websocket: true }
      - { id: ws-idle, methods: [GET], path: /idle, action: allow, websocket: true }
  - host: pay.test
    default: allow
`

// The bounds the WebSocket test sets: the policy's, and the proxy's flags
// (wsLimitFlags).
const (
	wsSentLimit     = 64 << 10
	wsReceivedLimit = 256 << 10
	wsFrameBytes    = 16 << 10
)

var wsLimitFlags = []string{"--websocket-max-received-bytes", "256KiB", "--websocket-idle-timeout", "1s"}

// wsStandIn is a WebSocket upstream: /echo sends back every message and
// counts the payload bytes it received, /flood sends 16 KiB messages until
// the connection breaks, /idle only reads.
type wsStandIn struct {
	srv *httptest.Server
	// echoed is the payload of the messages /echo received whole; done is
	// closed when its connection ended.
	echoed atomic.Int64
	done   chan struct{}
	once   sync.Once
}

func newWSStandIn(t *testing.T) *wsStandIn {
	t.Helper()
	s := &wsStandIn{done: make(chan struct{})}
	handler := func(ws *websocket.Conn) {
		switch ws.Request().URL.Path {
		case "/echo":
			defer s.once.Do(func() { close(s.done) })
			for {
				var msg []byte
				if err := websocket.Message.Receive(ws, &msg); err != nil {
					return
				}
				s.echoed.Add(int64(len(msg)))
				if err := websocket.Message.Send(ws, msg); err != nil {
					return
				}
			}
		case "/flood":
			msg := make([]byte, wsFrameBytes)
			for websocket.Message.Send(ws, msg) == nil {
			}
		default:
			var msg []byte
			for websocket.Message.Receive(ws, &msg) == nil {
			}
		}
	}
	srv := websocket.Server{Handshake: func(*websocket.Config, *http.Request) error { return nil }, Handler: handler}
	s.srv = httptest.NewUnstartedServer(srv)
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{upstreamCert(t)}}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

// startLimitStack runs the executor under wsLimitPolicy and the proxy with
// extra flags, api.github.test sent to a WebSocket stand-in and pay.test to
// a plain one.
func startLimitStack(t *testing.T, extra ...string) (*executor, *wsStandIn, *egressProxy) {
	t.Helper()
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, wsLimitPolicy)})
	ws := newWSStandIn(t)
	upstreams := map[string]string{"api.github.test": ws.srv.Listener.Addr().String(), "pay.test": newStandIn(t, "pay.test").addr()}
	p := startProxy(t, ports, e.deciderAddr, upstreams, upstreamCAPEM(t), extra...)
	e.waitProxy(t, p)
	return e, ws, p
}

// wsLimitsCode opens three WebSockets in turn: it sends 16 KiB messages on
// /echo until the relay is cut (at most 20, five times the limit), reads
// /flood until it is cut, and leaves /idle idle until it is closed.
const wsLimitsCode = `
const open = url => new Promise((res, rej) => {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => res(ws);
  ws.onerror = () => rej(new Error("could not open " + url));
});
const closed = ws => new Promise(res => { ws.onclose = e => res(e.code); });
(async () => {
  const out = {};
  let ws = await open("wss://api.github.test/echo");
  const msg = new Uint8Array(16384).fill(120);
  let sent = 0, echoed = 0;
  ws.onmessage = e => { echoed += e.data.byteLength; };
  let end = closed(ws);
  for (let i = 0; i < 20 && ws.readyState === WebSocket.OPEN; i++) {
    ws.send(msg); sent += msg.length;
    await new Promise(r => setTimeout(r, 25));
  }
  out.echo = { sent, code: await Promise.race([end, new Promise(r => setTimeout(() => r("still open"), 5000))]) };
  out.echo.echoed = echoed;

  ws = await open("wss://api.github.test/flood");
  let got = 0;
  ws.onmessage = e => { got += e.data.byteLength; };
  out.flood = { code: await closed(ws) };
  out.flood.got = got;

  ws = await open("wss://api.github.test/idle");
  const t = Date.now();
  out.idle = { code: await closed(ws), ms: Date.now() - t };
  console.log(JSON.stringify(out));
})().catch(e => console.log(JSON.stringify({ error: String(e) })));
`

// runPair runs req while a neighbouring sandbox makes allowed requests
// (startNeighbour, whose check asserts them) and decodes the last line req
// printed into out.
func runPair(t *testing.T, e *executor, req *executorv1.ExecuteRequest, out any) *run {
	t.Helper()
	nb := startNeighbour(t, e)
	r := e.execute(context.Background(), req)
	nb.check(t)
	lastJSON(t, r, out)
	return r
}

// TestWebSocketLimits relays WebSockets from a real sandbox through the
// real proxy: one sending past the policy's request byte limit is cut
// there (the upstream gets no more than the limit), one receiving past
// the proxy's bound is cut there, one left idle is closed after the idle
// timeout; each outcome event says why, with the bytes each way. A
// neighbouring sandbox's allowed requests succeed meanwhile.
func TestWebSocketLimits(t *testing.T) {
	e, ws, proxy := startLimitStack(t, wsLimitFlags...)
	var got struct {
		Error string
		Echo  struct {
			Sent, Echoed int
			Code         any
		}
		Flood struct {
			Got  int
			Code any
		}
		Idle struct {
			Code any
			MS   int
		}
	}
	req := code(wsLimitsCode)
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(30 * time.Second)}
	r := runPair(t, e, req, &got)
	select {
	case <-ws.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream's /echo connection did not end")
	}
	upstreamGot := ws.echoed.Load()
	t.Logf("sandbox: %+v; upstream received %d payload bytes", got, upstreamGot)
	if got.Error != "" {
		t.Fatalf("the program failed: %s\nproxy log:\n%s", got.Error, proxy.logs.String())
	}

	// Cut at the limit: the upstream received whole messages up to it,
	// and no more than it (the bound counts frame headers too), nor much
	// less: not cut early.
	if upstreamGot > wsSentLimit || upstreamGot < wsSentLimit-2*wsFrameBytes {
		t.Errorf("the upstream received %d payload bytes, want between %d and the limit %d", upstreamGot, wsSentLimit-2*wsFrameBytes, wsSentLimit)
	}
	// The sandbox's messages cross the limit with their frame headers;
	// the relay is cut before it sends them all.
	if got.Echo.Sent < wsSentLimit || got.Echo.Sent >= 20*wsFrameBytes || got.Echo.Code == "still open" || got.Echo.Echoed > wsSentLimit {
		t.Errorf("echo: %+v; want the relay cut once the sandbox sent about %d bytes", got.Echo, wsSentLimit)
	}
	if got.Flood.Got > wsReceivedLimit || got.Flood.Got < wsReceivedLimit-2*wsFrameBytes {
		t.Errorf("flood: the sandbox got %d payload bytes, want between %d and the limit %d", got.Flood.Got, wsReceivedLimit-2*wsFrameBytes, wsReceivedLimit)
	}
	// The relay's idle timer starts with the 101, a moment before the
	// sandbox's timer; an upper bound with a margin for a loaded machine.
	if got.Idle.MS < 800 || got.Idle.MS > 10000 {
		t.Errorf("idle WebSocket closed after %d ms, want about 1000 (the proxy's --websocket-idle-timeout)", got.Idle.MS)
	}

	outcomes := map[string]*executorv1.NetworkEvent{}
	for _, ev := range requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_OUTCOME) {
		outcomes[strings.TrimPrefix(ev.GetUrl(), "https://api.github.test")] = ev
	}
	tests := []struct {
		path       string
		sent, recv uint64 // 0: not checked
		reason     string
	}{
		{"/echo", wsSentLimit, 0, "websocket cut: the sandbox sent more than 65536 bytes (limits.max_request_bytes)"},
		{"/flood", 0, wsReceivedLimit, "websocket cut: the upstream sent more than 262144 bytes (the proxy's websocket-max-received-bytes)"},
		{"/idle", 0, 0, "websocket closed: nothing moved either way for 1s (the proxy's websocket-idle-timeout)"},
	}
	for _, tt := range tests {
		o := outcomes[tt.path]
		switch {
		case o == nil:
			t.Errorf("%s: no outcome event; events %v", tt.path, r.network)
		case o.GetStatusCode() != 101 || o.GetError() != tt.reason || (tt.sent != 0 && o.GetBytesSent() != tt.sent) || (tt.recv != 0 && o.GetBytesReceived() != tt.recv):
			t.Errorf("%s: outcome status %d, %d bytes sent, %d received, error %q; want 101, sent %d, received %d, %q",
				tt.path, o.GetStatusCode(), o.GetBytesSent(), o.GetBytesReceived(), o.GetError(), tt.sent, tt.recv, tt.reason)
		}
	}
}

// rateLimitCode sends 100 DNS queries, 2 a millisecond, then makes 200
// HTTPS requests back to back on one keep-alive connection (no DNS: the
// address and server name are given); it counts the answers, prints them
// and exits at once, so the last refusals are the last thing it did.
const rateLimitCode = `
const dgram = require("dgram"), https = require("https"), os = require("os");
const gw = os.networkInterfaces().eth0.find(a => a.family === "IPv4").address.replace(/\.\d+$/, m => "." + (Number(m.slice(1)) - 1));
const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
let limited = ""; // the error.code of the first 429's body
const get = () => new Promise(res => {
  const q = https.request({ host: "198.18.0.1", port: 443, servername: "pay.test", path: "/v1/products/p1",
    headers: { Host: "pay.test" }, agent }, r => {
    let b = ""; r.on("data", d => b += d);
    r.on("end", () => { if (r.statusCode === 429 && !limited) { try { limited = JSON.parse(b).error.code; } catch {} } res(String(r.statusCode)); });
  });
  q.on("error", e => res(e.code)); q.end();
});
const query = id => {
  const name = Buffer.concat(["pay", "test"].map(l => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])));
  const h = Buffer.alloc(12); h.writeUInt16BE(id, 0); h.writeUInt16BE(0x0100, 2); h.writeUInt16BE(1, 4);
  return Buffer.concat([h, name, Buffer.from([0, 0, 1, 0, 1])]);
};
(async () => {
  const out = { http: {}, dns: {} };
  const s = dgram.createSocket("udp4");
  s.on("message", m => { const rc = m[3] & 0xf; out.dns[rc] = (out.dns[rc] || 0) + 1; });
  await new Promise(r => s.bind(r));
  for (let i = 0; i < 100; i += 2) {
    s.send(query(i), 53, gw); s.send(query(i + 1), 53, gw);
    await new Promise(r => setTimeout(r, 1));
  }
  await new Promise(r => setTimeout(r, 200)); // the last DNS answers
  for (let i = 0; i < 200; i++) { const c = await get(); out.http[c] = (out.http[c] || 0) + 1; }
  out.limited = limited;
  console.log(JSON.stringify(out));
  process.exit(0);
})();
`

// TestRateLimitedCountedInResult: requests and DNS queries a sandbox sends
// past the proxy's per-source rate limits are refused at once (429,
// REFUSED) and every one of them is counted in the Result, the requests in
// requests_blocked too, even when the program exits right after them,
// while the network events show them sampled.
func TestRateLimitedCountedInResult(t *testing.T) {
	e, _, proxy := startLimitStack(t, "--http-rate", "5", "--http-burst", "10", "--dns-rate", "5", "--dns-burst", "10")
	var got struct {
		HTTP    map[string]int
		DNS     map[string]int
		Limited string // the error.code of a 429's body
	}
	// No neighbour here: at 5 a second its own rounds would be over the
	// limit. TestFloodingSandboxDoesNotStarveItsNeighbour checks one
	// against a flood at the default limits.
	r := e.mustRun(t, code(rateLimitCode))
	lastJSON(t, r, &got)
	res := r.result
	t.Logf("sandbox saw http %v, dns rcodes %v; result: %d allowed, %d blocked, %d rate limited, %d DNS rate limited",
		got.HTTP, got.DNS, res.GetRequestsAllowed(), res.GetRequestsBlocked(), res.GetRequestsRateLimited(), res.GetDnsQueriesRateLimited())
	limited, refused := got.HTTP["429"], got.DNS["5"]
	if limited < 150 || got.HTTP["200"]+limited != 200 {
		t.Fatalf("http answers %v: want 200 answers, most of them 429\nproxy log:\n%s", got.HTTP, proxy.logs.String())
	}
	if got.Limited != "rate_limited" {
		t.Errorf("a 429's error.code is %q, want rate_limited", got.Limited)
	}
	if refused < 50 || got.DNS["0"]+refused != 100 {
		t.Fatalf("dns answers by rcode %v: want 100 answers, most REFUSED (5)", got.DNS)
	}
	if res.GetRequestsRateLimited() != uint32(limited) || res.GetRequestsBlocked() != uint32(limited) ||
		res.GetRequestsAllowed() != uint32(got.HTTP["200"]) || res.GetDnsQueriesRateLimited() != uint32(refused) {
		t.Errorf("result counts %d allowed, %d blocked, %d rate limited, %d DNS rate limited; want %d, %d, %d, %d",
			res.GetRequestsAllowed(), res.GetRequestsBlocked(), res.GetRequestsRateLimited(), res.GetDnsQueriesRateLimited(),
			got.HTTP["200"], limited, limited, refused)
	}
	if n := len(res.GetNetworkLog()); n != got.HTTP["200"] {
		t.Errorf("network log has %d entries, want the %d allowed requests only", n, got.HTTP["200"])
	}
	// Sampled: one refused event per kind a second at most; the program
	// ran well under 5 s.
	var sampled int
	for _, ev := range requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED) {
		if !strings.HasPrefix(ev.GetReason(), "rate limited: ") {
			t.Errorf("refused event %v", ev)
		}
		sampled++
	}
	if sampled < 2 || sampled > 10 {
		t.Errorf("%d refused events for %d refusals, want a sample of at least one per kind", sampled, limited+refused)
	}
}
