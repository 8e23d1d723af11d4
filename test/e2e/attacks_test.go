package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// cpuTime is the CPU time (user and system) the process has used so far.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are the 12th and 13th of them.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// trickledHeadCPUBound is the most CPU time the proxy may spend on one
// 60 KiB request head that arrives a byte at a time. Measured here: 0.1 s
// with the head scanned once (linear), 1.9 s when the whole head was
// searched again for every byte that arrived (the quadratic peekHead this
// bound would catch).
const trickledHeadCPUBound = 600 * time.Millisecond

// TestTrickledHeadCostsLinearTime has a sandbox send a 60 KiB request head
// (just under the 64 KiB bound, in short header lines) one byte per TLS
// record, so that the proxy reads it a byte at a time: the request is
// answered, the proxy spends less than trickledHeadCPUBound on it, and a
// neighbour's requests stay within their bounds meanwhile.
func TestTrickledHeadCostsLinearTime(t *testing.T) {
	s := startNetStack(t)
	nb := startNeighbour(t, s.e)
	pid := s.proxy.cmd.Process.Pid
	before := cpuTime(t, pid)
	req := code(`
const tls = require("tls");
const lines = [];
for (let i = 0, n = 0; n < 60 * 1024 - 200; i++) { const l = "x-t" + i + ": v\r\n"; lines.push(l); n += l.length; }
const head = "GET /v1/products/trickle HTTP/1.1\r\nHost: pay.test\r\nConnection: close\r\n" + lines.join("") + "\r\n";
const s = tls.connect({ host: "198.18.0.1", port: 443, servername: "pay.test" });
let resp = "", start, sentMs;
s.on("data", d => resp += d);
s.on("error", e => { console.log(JSON.stringify({ status: e.code })); process.exit(0); });
s.on("end", () => console.log(JSON.stringify({ status: resp.split("\r\n")[0], bytes: head.length, sentMs, answeredMs: performance.now() - start })));
s.on("secureConnect", async () => {
  start = performance.now();
  // One write at a time, each its own TLS record.
  for (let i = 0; i < head.length; i++) await new Promise(r => s.write(head[i], r));
  sentMs = performance.now() - start;
});
`)
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(2 * time.Minute)}
	var got struct {
		Status             string
		Bytes              int
		SentMs, AnsweredMs float64
	}
	probe(t, s.e, req, &got)
	used := cpuTime(t, pid) - before
	nb.check(t)
	t.Logf("trickled head: %d bytes one per record in %.0f ms, answered %.0f ms after the first: %q; proxy CPU %s (bound %s)",
		got.Bytes, got.SentMs, got.AnsweredMs, got.Status, used, trickledHeadCPUBound)
	if got.Status != "HTTP/1.1 200 OK" || got.Bytes < 60<<10-200 {
		t.Errorf("trickled head of %d bytes: %q, want 200 OK from the stand-in", got.Bytes, got.Status)
	}
	if used > trickledHeadCPUBound {
		t.Errorf("the proxy spent %s of CPU on one trickled head, over %s", used, trickledHeadCPUBound)
	}
	if !strings.Contains(strings.Join(s.pay.requests(), "\n"), "/v1/products/trickle") {
		t.Errorf("the stand-in did not get the trickled request: %v", s.pay.requests())
	}
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestOutOfDescriptorsIsReportedAndSurvived lowers the running proxy's
// RLIMIT_NOFILE to a few descriptors over what it holds and has a sandbox
// open silent connections until the proxy cannot accept: health goes
// NOT_SERVING and the proxy logs the accept error while it retries; once
// the sandbox has exited (its connections closed by the proxy) health is
// SERVING again, without a restart, and a neighbour's requests succeed.
func TestOutOfDescriptorsIsReportedAndSurvived(t *testing.T) {
	s := startNetStack(t)
	pid := s.proxy.cmd.Process.Pid
	// Health over a connection opened now: out of descriptors, the proxy
	// accepts no new one.
	conn, err := grpc.NewClient(s.proxy.ports.proxyGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := func() healthpb.HealthCheckResponse_ServingStatus {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("health: %v", err)
		}
		return res.GetStatus()
	}
	if st := health(); st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before: %v", st)
	}
	fds := openFDs(t, pid)
	limit := uint64(fds + 32)
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}

	// 200 connections that send nothing hold a descriptor each until the
	// proxy's handshake timeout (10 s), longer than the sandbox lives.
	flood := code(`
const net = require("net");
let connected = 0;
const errors = {};
(async () => {
  await Promise.all(Array.from({ length: 200 }, () => new Promise(res => {
    const s = net.connect({ host: "198.18.0.1", port: 443 }, () => { connected++; res(); });
    s.on("error", e => { errors[e.code] = (errors[e.code] || 0) + 1; res(); });
  })));
  await new Promise(r => setTimeout(r, 4000));
  console.log(JSON.stringify({ connected, errors }));
  process.exit(0);
})();
`)
	flood.Limits = &executorv1.Limits{Timeout: durationpb.New(30 * time.Second)}
	done := make(chan *run, 1)
	go func() { done <- s.e.execute(context.Background(), flood) }()
	var notServing time.Duration
	start := time.Now()
	var r *run
	for r == nil {
		select {
		case r = <-done:
		case <-time.After(100 * time.Millisecond):
			if notServing == 0 && health() == healthpb.HealthCheckResponse_NOT_SERVING {
				notServing = time.Since(start)
			}
		}
	}
	ended := time.Now()
	var out struct {
		Connected int
		Errors    map[string]int
	}
	lastJSON(t, r, &out)
	var serving time.Duration
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if health() == healthpb.HealthCheckResponse_SERVING {
			serving = time.Since(ended)
			break
		}
	}
	t.Logf("proxy at %d descriptors, limit %d: sandbox connected %d (errors %v); NOT_SERVING %s after the flood began; SERVING %s after the sandbox ended; %d descriptors then",
		fds, limit, out.Connected, out.Errors, notServing.Round(time.Millisecond), serving.Round(time.Millisecond), openFDs(t, pid))
	if notServing == 0 {
		t.Error("health never went NOT_SERVING while the proxy could not accept")
	}
	logs := s.proxy.logs.String()
	if !strings.Contains(logs, "accept failed; retrying") || !strings.Contains(logs, "too many open files") {
		t.Error("the proxy did not log the failing accept")
	}
	if serving == 0 {
		t.Fatal("health not SERVING 15 s after the sandbox ended")
	}
	if !strings.Contains(logs, "accepting again") {
		t.Error("the proxy did not log that it accepts again")
	}
	select {
	case <-s.proxy.done:
		t.Fatal("the proxy exited")
	default:
	}
	nb := startNeighbour(t, s.e)
	time.Sleep(time.Second)
	nb.check(t)
}

// TestDNSBudgetFromSandbox has a sandbox make 1,010 lookups of an allowed
// name, with the proxy's per-source DNS limits off so that only the
// execution's budget (decision.DNSBudget, 1,000) stops it: the first 1,000
// are answered, the rest get NXDOMAIN, one network event names the budget,
// and a neighbour, whose budget is its own, is answered meanwhile.
func TestDNSBudgetFromSandbox(t *testing.T) {
	const budget, n = 1000, 1010
	s, _ := startPolicyStack(t, denyRulesPolicy, "--dns-rate", "0", "--dns-in-flight", "0")
	nb := startNeighbour(t, s.e)
	var got struct {
		Answered, FirstRefused int
		Refused                map[string]int
	}
	r := probe(t, s.e, code(`
const dns = require("dns");
(async () => {
  const out = { answered: 0, refused: {}, firstRefused: -1 };
  for (let i = 0; i < `+strconv.Itoa(n)+`; i++) {
    const r = await dns.promises.resolve4("pay.test").then(() => "answered", e => e.code);
    if (r === "answered") { out.answered++; continue; }
    out.refused[r] = (out.refused[r] || 0) + 1;
    if (out.firstRefused < 0) out.firstRefused = i;
  }
  console.log(JSON.stringify(out));
})();
`), &got)
	nb.check(t)
	t.Logf("%d lookups: %d answered, refused %v from lookup %d", n, got.Answered, got.Refused, got.FirstRefused)
	if got.Answered != budget || got.Refused["ENOTFOUND"] != n-budget || got.FirstRefused != budget {
		t.Errorf("%d lookups: %d answered, refused %v from lookup %d; want %d answered, then NXDOMAIN", n, got.Answered, got.Refused, got.FirstRefused, budget)
	}
	var spent []string
	for _, ev := range requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_DNS) {
		if ev.GetRuleId() == "dns.budget" {
			spent = append(spent, ev.GetReason())
		}
	}
	if len(spent) != 1 || spent[0] != "dns query budget of 1000 queries per execution spent" {
		t.Errorf("budget events %q, want one naming the budget", spent)
	}
}

// TestRefusalReasonsDoNotEchoTheTarget sends a request whose target Go
// cannot parse (a bad escape before a query with a key): it is blocked
// with a fixed reason that repeats no part of the target, the key appears
// in neither the answer, the network events, the Result nor either log,
// and a neighbour's requests succeed meanwhile.
func TestRefusalReasonsDoNotEchoTheTarget(t *testing.T) {
	const key = "EchoKey4242e2e"
	s := startNetStack(t)
	nb := startNeighbour(t, s.e)
	var got struct {
		Status any
		Body   string
	}
	r := probe(t, s.e, code(`
const q = require("https").request({ host: "pay.test", path: "/v1/products/100%?api_key=`+key+`", agent: false }, r => {
  let body = ""; r.on("data", d => body += d); r.on("end", () => console.log(JSON.stringify({ status: r.statusCode, body })));
});
q.on("error", e => console.log(JSON.stringify({ status: e.code })));
q.end();
`), &got)
	nb.check(t)
	t.Logf("unparsable target: %v %s", got.Status, got.Body)
	if got.Status != float64(403) || !strings.Contains(got.Body, `"reason":"ambiguous path: invalid percent escape"`) {
		t.Errorf("unparsable target: %v %q, want 403 with a reason", got.Status, got.Body)
	}
	written := map[string]string{"body": got.Body, "executor log": s.execLogs.String(), "proxy log": s.proxy.logs.String()}
	for _, ev := range r.network {
		written["event reasons"] += ev.GetReason() + "\n"
		written["event URLs"] += ev.GetUrl() + "\n"
	}
	for _, l := range r.result.GetNetworkLog() {
		written["result"] += l.GetReason() + " " + l.GetUrl() + "\n"
	}
	for what, text := range written {
		if strings.Contains(text, key) {
			t.Errorf("the key in the %s", what)
		}
	}
	var body struct{ Reason string }
	_ = json.Unmarshal([]byte(got.Body), &body)
	written["body's reason"] = body.Reason
	for _, what := range []string{"body's reason", "event reasons"} {
		if strings.Contains(written[what], "100%") || strings.Contains(written[what], "api_key") {
			t.Errorf("the %s echo the target: %s", what, written[what])
		}
	}
}
