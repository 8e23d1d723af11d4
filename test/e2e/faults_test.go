package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// loadProgram is the code of a sandbox under load in the fault tests. It
// makes rounds of requests through the proxy, every 50ms: an allowed GET
// on pay.test, a GET pay.test denies (/v1/charges), a GET for
// forbidden.test (in no rule; sent to pay.test's address with its own SNI
// and Host, so that it reaches the proxy's HTTP path) and a DNS lookup. It
// counts what each returned by phase and prints "warm TAG" once an
// allowed request got through.
//
// With cut set it also holds one allowed request to a path that hangs
// mid-response (see newHangingStandIn), and prints "warm" only once that
// one is under way; the phases are "up" until the hanging request ends
// (the proxy went away), "down" until an allowed request gets an answer
// that is not a connection error (a proxy is back), then "back" for half a
// second, and the program prints its counts as JSON and exits. Without
// cut it stays "up" and never ends by itself.
func loadProgram(tag string, cut bool) *executorv1.ExecuteRequest {
	req := code(fmt.Sprintf(`
const dns = require("dns"), https = require("https");
const tag = %q, cut = %v;
const get = (addr, host, path, timeout, onResponse) => new Promise(res => {
  let done = false;
  const fin = v => { if (!done) { done = true; res(v); } };
  const q = https.request({ host: addr, port: 443, servername: host, path, headers: { Host: host }, timeout }, r => {
    if (onResponse) onResponse();
    r.on("data", () => {});
    r.on("end", () => fin(String(r.statusCode)));
    r.on("aborted", () => fin("aborted"));
    r.on("error", e => fin(e.code || e.message));
    r.on("close", () => fin("closed"));
  });
  q.on("error", e => fin(e.code || e.message));
  q.on("timeout", () => { q.destroy(); fin("timeout"); });
  q.end();
});
const counts = { up: {}, down: {}, back: {} };
let phase = "up", slow = "", slowAt = 0, backAt = 0;
const note = (kind, v) => { const p = counts[phase]; p[kind + " " + v] = (p[kind + " " + v] || 0) + 1; };
(async () => {
  const addr = (await dns.promises.resolve4("pay.test"))[0];
  let slowStarted = !cut, fastOK = false, warm = false;
  if (cut) {
    get(addr, "pay.test", "/v1/products/slow-" + tag, 60000, () => { slowStarted = true; })
      .then(v => { slow = v; slowAt = Date.now(); phase = "down"; });
  }
  for (let round = 0; ; round++) {
    const [fast, denied, forbidden, lookup] = await Promise.all([
      get(addr, "pay.test", "/v1/products/" + tag + "-" + round, 5000),
      get(addr, "pay.test", "/v1/charges", 5000),
      get(addr, "forbidden.test", "/" + tag, 5000),
      dns.promises.resolve4("pay.test").then(() => "answered", e => e.code),
    ]);
    if (phase === "down" && !/^(ECONNREFUSED|ECONNRESET|EPIPE|timeout|aborted|closed|socket hang up)$/.test(fast)) {
      phase = "back"; backAt = Date.now();
    }
    note("fast", fast); note("denied", denied); note("forbidden", forbidden); note("dns", lookup);
    if (fast === "200") fastOK = true;
    if (!warm && fastOK && slowStarted) { warm = true; console.log("warm " + tag); }
    if (phase === "back" && Date.now() - backAt > 500) break;
    if (phase === "down" && Date.now() - slowAt > 15000) break;
    await new Promise(r => setTimeout(r, 50));
  }
  console.log(JSON.stringify({ slow, slowAt, backAt, counts }));
})();
`, tag, cut))
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(40 * time.Second)}
	return req
}

// afterRestart is the code of a sandbox started after the restart: it
// prints the status of an allowed request, or why it failed.
const afterRestart = `fetch("https://pay.test/v1/products/after-restart").then(r => console.log(r.status), e => console.log(String(e.cause && e.cause.code || e)))`

// loadCounts is what loadProgram prints at its end.
type loadCounts struct {
	Slow   string                    `json:"slow"`
	SlowAt int64                     `json:"slowAt"` // Unix ms, the host's clock
	BackAt int64                     `json:"backAt"`
	Counts map[string]map[string]int `json:"counts"`
}

// count sums, in phase, the answers of kind that match re.
func (c loadCounts) count(phase, kind, re string) int {
	n := 0
	for k, v := range c.Counts[phase] {
		if what, ok := strings.CutPrefix(k, kind+" "); ok && regexp.MustCompile("^(?:"+re+")$").MatchString(what) {
			n += v
		}
	}
	return n
}

// liveRun is an execution whose stream is read in the background, so that
// the test can act while the program runs.
type liveRun struct {
	warm    chan struct{} // closed when the program printed "warm"
	done    chan struct{} // closed when the stream ended
	events  []*executorv1.ExecuteResponse
	stdout  string
	result  *executorv1.Result
	err     error
	endedAt time.Time
}

func startLive(ctx context.Context, t *testing.T, client executorv1.ExecutorServiceClient, req *executorv1.ExecuteRequest) *liveRun {
	t.Helper()
	l := &liveRun{warm: make(chan struct{}), done: make(chan struct{})}
	stream, err := client.Execute(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(l.done)
		var warmOnce sync.Once
		for {
			ev, err := stream.Recv()
			if err != nil {
				l.endedAt = time.Now()
				if err != io.EOF {
					l.err = err
				}
				return
			}
			l.events = append(l.events, ev)
			l.stdout += string(ev.GetStdout().GetData())
			if strings.Contains(l.stdout, "warm ") {
				warmOnce.Do(func() { close(l.warm) })
			}
			if r := ev.GetResult(); r != nil {
				l.result = r
			}
		}
	}()
	return l
}

// waitAll waits for every run's channel pick returns, failing after d.
func waitAll(t *testing.T, what string, d time.Duration, runs []*liveRun, pick func(*liveRun) chan struct{}) {
	t.Helper()
	deadline := time.After(d)
	for i, r := range runs {
		select {
		case <-pick(r):
		case <-deadline:
			t.Fatalf("run %d: not %s after %s\nstdout: %s", i, what, d, r.stdout)
		}
	}
}

// counts parses the program's last line.
func (l *liveRun) counts(t *testing.T) loadCounts {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(l.stdout), "\n")
	var c loadCounts
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &c); err != nil {
		t.Fatalf("the program's last line is not its counts: %v\nstdout: %s", err, l.stdout)
	}
	return c
}

// newHangingStandIn is a stand-in like newStandIn for host, except that
// its answer to a path under /v1/products/slow- sends the headers and a
// first chunk and then hangs until the connection from the proxy closes:
// a request cut mid-flight.
func newHangingStandIn(t *testing.T, host string) *standIn {
	t.Helper()
	s := &standIn{host: host}
	release := make(chan struct{})
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		s.seen = append(s.seen, r.Method+" "+r.Host+" "+r.URL.RequestURI())
		s.mu.Unlock()
		if !strings.HasPrefix(r.URL.Path, "/v1/products/slow-") {
			fmt.Fprint(w, `{"ok":true}`)
			return
		}
		_, _ = w.Write([]byte("first chunk\n"))
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	s.srv.EnableHTTP2 = true
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{upstreamCert(t)}}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	t.Cleanup(func() { close(release) })
	return s
}

// onlyAllowedPaths fails if pay saw a request outside the policy's
// allowed paths, or forbidden saw any.
func onlyAllowedPaths(t *testing.T, pay, forbidden *standIn) {
	t.Helper()
	for _, r := range pay.requests() {
		if !strings.HasPrefix(r, "GET pay.test /v1/products/") {
			t.Errorf("pay.test got a request the policy denies: %s", r)
		}
	}
	if n := forbidden.hits.Load(); n != 0 {
		t.Errorf("forbidden.test got %d requests: %v", n, forbidden.requests())
	}
}

// TestProxySIGKILLedUnderLoad kills the proxy while two sandboxes make a
// steady stream of allowed, denied and forbidden requests, each with one
// allowed request mid-response, and starts a new proxy (a new CA) on the
// same ports. Nothing denied reaches an upstream; each program sees its
// cut request fail and connections refused while no proxy listens; each
// execution ends with a Result that says the cut request got no outcome
// because the proxy went away and that the proxy came back with another
// CA; a sandbox started after the restart trusts the new CA and gets its
// allowed request through; nothing is left behind.
func TestProxySIGKILLedUnderLoad(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy)})
	pay := newHangingStandIn(t, "pay.test")
	forbidden := newStandIn(t, "forbidden.test")
	upstreams := map[string]string{"pay.test": pay.addr(), "forbidden.test": forbidden.addr()}
	ca := upstreamCAPEM(t)
	px := startProxy(t, ports, e.deciderAddr, upstreams, ca)
	first := waitProxyCA(t, e, "", px)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runs := []*liveRun{startLive(ctx, t, e.client, loadProgram("a", true)), startLive(ctx, t, e.client, loadProgram("b", true))}
	waitAll(t, "warm", 20*time.Second, runs, func(l *liveRun) chan struct{} { return l.warm })
	// A few rounds of load before the kill.
	time.Sleep(500 * time.Millisecond)

	killed := time.Now()
	if err := px.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-px.done
	// Long enough for every program to see connections refused.
	time.Sleep(time.Second)
	restarted := time.Now()
	px2 := startProxy(t, ports, e.deciderAddr, upstreams, ca)
	waitProxyCA(t, e, first, px2)
	hello := logLine(t, px2.logs, "msg", "decide stream open").time(t).Sub(restarted)
	waitAll(t, "ended", 30*time.Second, runs, func(l *liveRun) chan struct{} { return l.done })

	for i, r := range runs {
		name := string(rune('a' + i))
		if r.err != nil || r.result == nil {
			t.Fatalf("run %s: %v, result %v\nstdout: %s", name, r.err, r.result, r.stdout)
		}
		c := r.counts(t)
		t.Logf("run %s: Result %.2fs after the kill, cut request failed %dms after it (%s); counts %v",
			name, r.endedAt.Sub(killed).Seconds(), c.SlowAt-killed.UnixMilli(), c.Slow, c.Counts)
		switch {
		case c.Slow == "" || c.Slow == "200":
			t.Errorf("run %s: the request cut mid-response ended %q, want an error", name, c.Slow)
		case c.count("up", "fast", "200") == 0 || c.count("up", "denied", "403") == 0:
			t.Errorf("run %s: before the kill, allowed and denied requests were not answered 200 and 403: %v", name, c.Counts["up"])
		// A round that had its connection open at the kill sees it reset;
		// later ones are refused.
		case c.count("down", "fast", "ECONNREFUSED|ECONNRESET") == 0 || c.count("down", "fast", "200") != 0:
			t.Errorf("run %s: allowed requests were not refused or reset while the proxy was down: %v", name, c.Counts["down"])
		case c.count("back", "fast", "UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT_LOCALLY") == 0:
			t.Errorf("run %s: after the restart the sandbox trusted the new proxy's CA it was never given: %v", name, c.Counts["back"])
		}
		for _, phase := range []string{"up", "down", "back"} {
			if n := c.count(phase, "denied|forbidden", "200"); n != 0 {
				t.Errorf("run %s: %d denied or forbidden requests answered 200 (%s)", name, n, phase)
			}
		}
		checkCutRequest(t, name, r)
		if !strings.Contains(r.result.GetNetworkError(), "restarted with another CA") {
			t.Errorf("run %s: network_error %q, want it to say the proxy restarted with another CA", name, r.result.GetNetworkError())
		}
	}
	onlyAllowedPaths(t, pay, forbidden)

	after := e.mustRun(t, code(afterRestart))
	if got := strings.TrimSpace(string(after.stdout)); got != "200" {
		t.Errorf("a sandbox started after the restart: %q, want 200\nproxy: %s", got, px2.logs.String())
	}
	if len(after.result.GetNetworkLog()) != 1 || after.result.GetNetworkLog()[0].GetStatusCode() != 200 || after.result.GetNetworkError() != "" {
		t.Errorf("after the restart: log %v, network_error %q", after.result.GetNetworkLog(), after.result.GetNetworkError())
	}
	t.Logf("the new proxy's stream open %.0fms after it was started", hello.Seconds()*1000)
	requireNoLeftovers(t, stateDir, "")
	requireNoNetworkLeftovers(t)
}

// waitProxyCA waits until the executor holds the hello of a proxy whose
// CA is not old, and returns that CA's fingerprint.
func waitProxyCA(t *testing.T, e *executor, old string, px *egressProxy) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if p, ok := e.app.Egress().Registry().Proxy(); ok && p.CASHA256 != old {
			return p.CASHA256
		}
		if time.Now().After(deadline) {
			t.Fatalf("no hello from a proxy with a new CA within 10s\n%s", px.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkCutRequest checks what r's Result and events say of its request
// cut mid-response, and that no allowed request is left without an
// outcome or a reason.
func checkCutRequest(t *testing.T, name string, r *liveRun) {
	t.Helper()
	var cut *executorv1.NetworkLogEntry
	for _, l := range r.result.GetNetworkLog() {
		if !l.GetBlocked() && l.GetStatusCode() == 0 && l.GetReason() == "" {
			t.Errorf("run %s: allowed request with neither an outcome nor a reason: %v", name, l)
		}
		if strings.Contains(l.GetUrl(), "/v1/products/slow-") {
			cut = l
		}
	}
	if cut == nil || cut.GetBlocked() || !strings.Contains(cut.GetReason(), "decision stream closed") {
		t.Errorf("run %s: the cut request in the log: %v, want allowed with the reason that the proxy went away", name, cut)
	}
	var outcome string
	for _, ev := range r.events {
		if n := ev.GetNetwork(); n.GetKind() == executorv1.NetworkEventKind_NETWORK_EVENT_KIND_OUTCOME && strings.Contains(n.GetUrl(), "/v1/products/slow-") {
			outcome = n.GetError()
		}
	}
	if !strings.Contains(outcome, "decision stream closed") {
		t.Errorf("run %s: the cut request's outcome event has error %q, want the reason that the proxy went away", name, outcome)
	}
}

// TestExecutorSIGKILLedUnderLoad kills the executor binary while two
// sandboxes make requests through the proxy: the callers' streams end at
// once with UNAVAILABLE; the orphaned sandboxes keep running but the proxy
// forwards none of their requests; the restarted executor (same state
// directory) removes their containers, tasks, snapshots, namespaces and
// veths and installs its nftables table afresh before it serves; the proxy
// reconnects on its own; a new execution's allowed request succeeds, and
// the orphans never get one through.
func TestExecutorSIGKILLedUnderLoad(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	eo := startEgress(t, ports, basePolicy)
	decider := "unix://" + eo.decisionSocket
	flags := eo.flags()
	dir := t.TempDir()
	p := startProc(t, dir, flags...)
	pay := newStandIn(t, "pay.test")
	forbidden := newStandIn(t, "forbidden.test")
	px := startProxy(t, ports, decider, map[string]string{"pay.test": pay.addr(), "forbidden.test": forbidden.addr()}, upstreamCAPEM(t))
	waitLog(t, p.logs, "egress proxy connected", 10*time.Second)
	table := nftTable(t)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := p.client(t)
	runs := []*liveRun{startLive(ctx, t, client, loadProgram("orphan1", false)), startLive(ctx, t, client, loadProgram("orphan2", false))}
	waitAll(t, "warm", 20*time.Second, runs, func(l *liveRun) chan struct{} { return l.warm })
	// Under load the table holds elements of the sandboxes' addresses
	// (the DNS meter's).
	loaded := nftTable(t)

	killed := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitAll(t, "ended", 5*time.Second, runs, func(l *liveRun) chan struct{} { return l.done })
	for i, r := range runs {
		if status.Code(r.err) != codes.Unavailable {
			t.Errorf("run %d: the caller's stream ended with %v, want UNAVAILABLE", i, r.err)
		}
		t.Logf("run %d: stream ended %.0fms after the kill: %v", i, r.endedAt.Sub(killed).Seconds()*1000, r.err)
	}
	<-p.done
	// From the moment the proxy knows its stream is gone (and a little
	// more, for requests it had decided before), nothing of the orphans
	// may reach an upstream.
	waitLog(t, px.logs, "decide stream lost", 5*time.Second)
	time.Sleep(300 * time.Millisecond)
	orphanHits := func() int {
		n := 0
		for _, r := range pay.requests() {
			if strings.Contains(r, "/v1/products/orphan") {
				n++
			}
		}
		return n
	}
	before := orphanHits()
	// The orphans keep trying while no executor is up, for as long as a
	// restart by a supervisor may take: the proxy's redials back off
	// meanwhile.
	time.Sleep(4 * time.Second)
	if l := leftovers(t, dir, ""); len(l) == 0 {
		t.Fatal("nothing left after SIGKILL; the test would prove nothing")
	}
	if n := orphanHits() - before; n != 0 {
		t.Errorf("with no executor up, %d requests of the orphaned sandboxes reached pay.test", n)
	}
	refused := 0
	for _, l := range logLines(px.logs) {
		if path, _ := l["path"].(string); strings.HasPrefix(path, "/v1/products/orphan") && l["reason"] == "policy decision unavailable: no decide stream" {
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("the proxy refused no allowed request of the orphans while no executor was up; the test would prove nothing")
	}

	restart := time.Now()
	p2 := startProc(t, dir, flags...)
	requireNoLeftovers(t, dir, "")
	requireNoNetworkLeftovers(t)
	// The sandboxes' network namespaces and veths went with their
	// processes, which the sweep killed with the containers.
	if !strings.Contains(p2.logs.String(), `"containers":2`) {
		t.Errorf("the new executor did not report removing 2 containers:\n%s", p2.logs.String())
	}
	if got := nftTable(t); got != table {
		t.Errorf("nftables table after the restart:\n%s\nwant, as before the load:\n%s", got, table)
	}
	waitLog(t, p2.logs, "egress proxy connected", 10*time.Second)
	swept := logLine(t, p2.logs, "msg", "removed leftover sandbox networks").time(t).Sub(restart)
	serving := logLine(t, p2.logs, "msg", "serving").time(t)
	reconnect := logLine(t, p2.logs, "msg", "egress proxy connected").time(t).Sub(serving)
	// The proxy redials at least once a second (decide.MaxRedialDelay),
	// both its connection and its stream.
	if reconnect > 3*time.Second {
		t.Errorf("the proxy reconnected %s after the executor served, want within 3s", reconnect)
	}

	e2 := &executor{client: p2.client(t)}
	r := e2.mustRun(t, code(afterRestart))
	if got := strings.TrimSpace(string(r.stdout)); got != "200" {
		t.Errorf("a new execution's allowed request: %q, want 200\nproxy: %s", got, px.logs.String())
	}
	if n := orphanHits() - before; n != 0 {
		t.Errorf("%d requests of the orphaned sandboxes reached pay.test", n)
	}
	// The new executor's first sandbox has an orphan's address (the
	// pool's first): reused, and only after the sweep.
	now := logLine(t, px.logs, "path", "/v1/products/after-restart")["source_ip"]
	o1, o2 := logLine(t, px.logs, "path", "/v1/products/orphan1-0")["source_ip"], logLine(t, px.logs, "path", "/v1/products/orphan2-0")["source_ip"]
	if now != o1 && now != o2 {
		t.Errorf("the new execution has address %v, the orphans had %v and %v: the test no longer covers a reused address", now, o1, o2)
	}
	// The table compared after the restart had the orphans' elements.
	for _, ip := range []any{o1, o2} {
		if s, _ := ip.(string); s == "" || !strings.Contains(loaded, s) {
			t.Errorf("under load the nftables table had no element of orphan address %v; the comparison after the restart proves less:\n%s", ip, loaded)
		}
	}
	onlyAllowedPaths(t, pay, forbidden)
	t.Logf("%d allowed requests of the orphans refused with no executor; restarted executor: sweep done %.0fms after its start, serving at %.0fms; the proxy reconnected %.0fms after that",
		refused, swept.Seconds()*1000, serving.Sub(restart).Seconds()*1000, reconnect.Seconds()*1000)

	// A clean stop removes the table the SIGKILLed run could not.
	_ = p2.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p2.done:
	case <-time.After(20 * time.Second):
		t.Error("the executor did not exit after SIGTERM")
	}
	requireNoLeftovers(t, dir, "")
}

// waitLog waits until logs contain s.
func waitLog(t *testing.T, logs *lockedBuffer, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log within %s:\n%s", s, d, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logEntry is one line of a JSON log.
type logEntry map[string]any

// logLines parses logs (slog JSON, one object a line).
func logLines(logs *lockedBuffer) []logEntry {
	var out []logEntry
	for _, line := range strings.Split(logs.String(), "\n") {
		var l logEntry
		if json.Unmarshal([]byte(line), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// logLine returns the first line of logs whose key is value.
func logLine(t *testing.T, logs *lockedBuffer, key, value string) logEntry {
	t.Helper()
	for _, l := range logLines(logs) {
		if l[key] == value {
			return l
		}
	}
	t.Fatalf("no log line with %s %q:\n%s", key, value, logs.String())
	return nil
}

// time is when the line was logged.
func (l logEntry) time(t *testing.T) time.Time {
	t.Helper()
	s, _ := l["time"].(string)
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("log line without a time: %v", l)
	}
	return at
}

// nftTable lists the e2e nftables table (no handles).
func nftTable(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("nft", "list", "table", "ip", testTable).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, out)
	}
	return string(out)
}
