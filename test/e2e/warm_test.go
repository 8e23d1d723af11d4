package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// The warm pool (issue 12): sandboxes booted ahead of time, each used by
// one execution and destroyed. These tests hold it to what the issue
// promises: a program cannot tell it ran warm, no two executions share a
// sandbox, an unclaimed sandbox has no egress, a killed executor's pool
// is swept, and the request's limits hold from the program's first line.

// warmStack is an executor with a warm pool of its own size and egress,
// as the users run it, with the proxy and stand-ins for pay.test
// (basePolicy allows GET /v1/products/** there) and for api.github.test
// over plain HTTP (everything allowed, http too), which records every
// request it gets.
type warmStack struct {
	e      *executor
	logs   *lockedBuffer
	proxy  *egressProxy
	pay    *standIn
	github *httptest.Server
	// githubSeen holds the requests the api.github.test stand-in got.
	githubSeen *lockedBuffer
}

func startWarmStack(t *testing.T, pool int) *warmStack {
	t.Helper()
	requireRunc(t)
	drainedAtShutdown(t)
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	s := &warmStack{logs: &lockedBuffer{}, pay: newStandIn(t, "pay.test"), githubSeen: &lockedBuffer{}}
	s.github = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(s.githubSeen, "%s %s %s\n", r.Method, r.Host, r.URL.RequestURI())
	}))
	t.Cleanup(s.github.Close)
	s.e = startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy), logs: s.logs, flags: warmFlags(pool, "127.0.0.1:0")})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("executor log:\n%s", s.logs.String())
		}
	})
	s.proxy = startProxy(t, ports, s.e.deciderAddr, map[string]string{"pay.test": s.pay.addr(), "api.github.test": s.github.Listener.Addr().String()}, upstreamCAPEM(t))
	s.e.waitProxy(t, s.proxy)
	return s
}

// drainedAtShutdown checks, once the test's executor has stopped (call it
// before starting the executor: cleanups run last to first), that its pool
// was drained: nothing of a sandbox is left.
func drainedAtShutdown(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		requireNoLeftovers(t, stateDir, "")
		requireNoNetworkLeftovers(t)
	})
}

// requireRunc fails a warm pool test where the tests' runtime is runsc:
// runsc requests go down the cold path by design, so these tests are not
// in the runsc run (RUNSC_TESTS in the Makefile).
func requireRunc(t *testing.T) {
	t.Helper()
	if env.Runtime == "runsc" {
		t.Fatal("the warm pool serves runc sandboxes only; run this test under runc")
	}
}

// warmFlags sizes the pool and serves the metrics waitWarm reads.
func warmFlags(pool int, metrics string) []string {
	return []string{"--warm-pool", strconv.Itoa(pool), "--metrics-listen", metrics}
}

// executorMetrics reads the executor's /metrics at addr.
func executorMetrics(t testing.TB, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("the executor's metrics: %v", err)
	}
	return mfs
}

// metricValue is the value of family name's series whose label key has
// value (its first series, when key is empty): a gauge's or a counter's,
// or a histogram's mean; 0 when there is no such series.
func metricValue(mfs map[string]*dto.MetricFamily, name, key, value string) float64 {
	for _, m := range mfs[name].GetMetric() {
		if key != "" && !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == key && l.GetValue() == value }) {
			continue
		}
		switch {
		case m.GetHistogram() != nil:
			return m.GetHistogram().GetSampleSum() / float64(max(m.GetHistogram().GetSampleCount(), 1))
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	return 0
}

// waitWarm waits until the pool of the executor whose metrics are at addr
// holds n ready sandboxes and boots none, and returns how long that took.
func waitWarm(t testing.TB, addr string, n int) time.Duration {
	t.Helper()
	start := time.Now()
	for deadline := start.Add(60 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m := executorMetrics(t, addr)
		ready, booting := metricValue(m, "sandpit_warm_sandboxes", "state", "ready"), metricValue(m, "sandpit_warm_sandboxes", "state", "booting")
		if int(ready) == n && booting == 0 {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the warm pool holds %v ready sandboxes and boots %v after 60s; want %d ready", ready, booting, n)
		}
	}
}

// sideCase is one program of TestWarmLikeCold.
type sideCase struct {
	name string
	req  *executorv1.ExecuteRequest
	// want is a part of stdout both runs must print: a check that holds
	// even were warm and cold wrong alike.
	want     string
	wantExit int32
	// stderrLines, when set, compares the first lines of stderr and its
	// last line only: the stack's tail below the program's own frame
	// (node's internals) is logged when it differs, not asserted. On
	// int-pool 333a3c1 the tails were the same too (both load main.js
	// through the ESM loader, as both run node with --import).
	stderrLines int
	// report: a difference is logged, not asserted.
	report bool
}

// sideBySide is the list of behaviours that must be the same warm
// and cold. Every program runs from main.js, the pool's entrypoint.
func sideBySide() []sideCase {
	withMain := func(main string, files ...*executorv1.File) *executorv1.ExecuteRequest {
		return &executorv1.ExecuteRequest{Entrypoint: "main.js", Files: append([]*executorv1.File{{Path: "main.js", Content: []byte(main)}}, files...)}
	}
	const readStdin = `let b = ""; process.stdin.setEncoding("utf8");
process.stdin.on("data", d => { b += d; });
process.stdin.on("end", () => console.log(JSON.stringify(["end", b])));`
	const readStdinSync = `console.log(JSON.stringify(["sync", require("fs").readFileSync(0, "utf8")]));`
	withStdin := func(src, stdin string) *executorv1.ExecuteRequest {
		r := code(src)
		r.Stdin = []byte(stdin)
		return r
	}
	return []sideCase{
		{name: "argv", req: &executorv1.ExecuteRequest{Code: `console.log(JSON.stringify(process.argv))`, Args: []string{"a", "b c", "--flag", ""}},
			want: `"/sandbox/main.js","a","b c","--flag",""]`},
		// The executor passes the request's variables in Go's map order,
		// which differs from run to run: with several, the program
		// prints the whole object sorted, and the keys in order with each
		// of the request's as "<request>".
		{name: "env", req: &executorv1.ExecuteRequest{
			Code: `const req = new Set(JSON.parse(process.argv[2]));
console.log(JSON.stringify(Object.fromEntries(Object.entries(process.env).sort())));
console.log(JSON.stringify(Object.keys(process.env).map(k => req.has(k) ? "<request>" : k)));`,
			Args: []string{`["ZED","ALPHA","MID_DLE","EMPTY"]`},
			Env:  map[string]string{"ZED": "last", "ALPHA": "first", "MID_DLE": "x y", "EMPTY": ""}},
			want: `{"ALPHA":"first","EMPTY":"",`},
		{name: "env in order", req: &executorv1.ExecuteRequest{Code: `console.log(JSON.stringify(process.env))`, Env: map[string]string{"ONLY": "one"}},
			want: `"ONLY":"one"`},
		{name: "execArgv", req: code(`console.log(JSON.stringify([process.execArgv, process.execPath]))`)},
		{name: "require.main", req: code(`console.log(JSON.stringify([require.main === module, require.main.filename, __filename, __dirname,
  module.id, module.paths, module.loaded, Object.keys(require.cache)]))`),
			want: `[true,"/sandbox/main.js","/sandbox/main.js","/sandbox",`},
		{name: "esm syntax", req: code(`import os from "node:os";
const n = await Promise.resolve(42);
console.log(JSON.stringify([import.meta.url, import.meta.filename, typeof require, typeof module, n, os.EOL.length]));`),
			want: `["file:///sandbox/main.js","/sandbox/main.js","undefined","undefined",42,1]`},
		{name: "esm package.json", req: withMain(`console.log(JSON.stringify([import.meta.url, typeof require, typeof module, this === undefined]))`,
			&executorv1.File{Path: "package.json", Content: []byte(`{"type": "module"}`)}),
			want: `["file:///sandbox/main.js","undefined","undefined",true]`},
		{name: "exitCode", req: code(`process.exitCode = 3; console.log("exit code set")`), want: "exit code set", wantExit: 3},
		{name: "uncaught exception", req: code("console.log(\"before\");\nthrow new Error(\"boom\");"),
			want: "before", wantExit: 1, stderrLines: 6},
		{name: "unhandled rejection", req: code(`Promise.reject(new Error("nope")); setTimeout(() => console.log("not reached"), 200);`),
			wantExit: 1, stderrLines: 6},
		{name: "stdin with bytes", req: withStdin(readStdin, "line one\nline two\n"), want: `["end","line one\nline two\n"]`},
		{name: "stdin empty", req: code(readStdin), want: `["end",""]`},
		{name: "stdin sync with bytes", req: withStdin(readStdinSync, "bytes"), want: `["sync","bytes"]`},
		{name: "stdin sync empty", req: code(readStdinSync), want: `["sync",""]`},
		// What stdin, stdout and stderr are (pipe, file, device, socket).
		{name: "stdio kinds", req: code(`const fs = require("fs");
console.log(JSON.stringify([0, 1, 2].map(fd => { const s = fs.fstatSync(fd); return [s.isFIFO(), s.isFile(), s.isCharacterDevice(), s.isSocket()]; }).concat([!!process.stdin.isTTY, !!process.stdout.isTTY])))`),
			report: true},
		// A fresh /tmp is empty; /sandbox holds the request's files only.
		{name: "readdir", req: code(`const fs = require("fs"); console.log(JSON.stringify([fs.readdirSync("/sandbox"), fs.readdirSync("/tmp")]))`),
			want: `[["main.js"],[]]`},
		{name: "code read-only", req: code(`try { require("fs").writeFileSync("/sandbox/main.js", "overwritten"); console.log("wrote"); } catch (e) { console.log(e.code); }`),
			want: "EROFS"},
		{name: "cwd hostname uid", req: code(`const os = require("os");
console.log(JSON.stringify([process.cwd(), os.hostname(), process.getuid(), process.getgid(), os.userInfo().username, os.homedir()]))`),
			want: `["/sandbox","sandbox",`},
		// node spawns node: the child runs normally (IPC, its own argv and
		// main module, the parent's execArgv), and exits.
		{name: "fork", req: withMain(`const { fork } = require("child_process");
const c = fork("/sandbox/child.js", ["x"]);
c.on("message", m => console.log("child said", JSON.stringify(m)));
c.on("exit", code => console.log("child exited", code));`,
			&executorv1.File{Path: "child.js", Content: []byte(`process.send({argv: process.argv.slice(1), execArgv: process.execArgv, main: require.main === module, env: Object.keys(process.env).length});
process.disconnect();`)}),
			want: "child exited 0"},
		{name: "title argv0", req: code(`console.log(JSON.stringify([process.title, process.argv0, process.execPath, process.release.name, process.version]))`)},
		{name: "proc cmdline", req: code(`console.log(JSON.stringify(require("fs").readFileSync("/proc/self/cmdline", "utf8").split("\0")))`), report: true},
		{name: "pid ppid", req: code(`console.log(JSON.stringify([process.pid, process.ppid]))`), report: true},
		// How long node has been up: a warm node was booted ahead.
		{name: "uptime", req: code(`console.log(JSON.stringify({uptime_ms: Math.round(process.uptime() * 1000), performance_now_ms: Math.round(performance.now())}))`), report: true},
	}
}

// sideOutcome is what a caller sees of one run.
type sideOutcome struct {
	stdout, stderr string
	exit           int32
	term           executorv1.Termination
	warm           bool
	// started is the Started event but for its execution id and warm.
	started string
}

// TestWarmLikeCold runs every program of sideBySide on an executor with a
// pool of two (waiting for it to be full before each run) and on one
// without a pool, both with egress: stdout, stderr, exit code and
// termination are the same, and Started.warm says which ran warm.
func TestWarmLikeCold(t *testing.T) {
	requireRunc(t)
	cases := sideBySide()
	runAll := func(t *testing.T, pool int) []sideOutcome {
		s := startWarmStack(t, pool)
		out := make([]sideOutcome, len(cases))
		for i, c := range cases {
			if pool > 0 {
				waitWarm(t, s.e.app.MetricsAddr(), pool)
			}
			c.req.Limits = &executorv1.Limits{Timeout: durationpb.New(15 * time.Second)}
			r := s.e.mustRun(t, c.req)
			started := proto.Clone(r.started).(*executorv1.Started)
			started.ExecutionId, started.Warm = "", false
			out[i] = sideOutcome{stdout: string(r.stdout), stderr: string(r.stderr), exit: r.result.GetExitCode(),
				term: r.result.GetTermination(), warm: r.started.GetWarm(), started: prototext.Format(started)}
		}
		warmStarts := 0
		if pool > 0 {
			warmStarts = len(cases)
		}
		m := executorMetrics(t, s.e.app.MetricsAddr())
		if w, c := metricValue(m, "sandpit_execution_starts_total", "path", "warm"), metricValue(m, "sandpit_execution_starts_total", "path", "cold"); int(w) != warmStarts || int(w+c) != len(cases) {
			t.Errorf("sandpit_execution_starts_total: %v warm, %v cold; want %d warm of %d", w, c, warmStarts, len(cases))
		}
		return out
	}
	var warm, cold []sideOutcome
	t.Run("warm", func(t *testing.T) { warm = runAll(t, 2) })
	t.Run("cold", func(t *testing.T) { cold = runAll(t, 0) })
	if warm == nil || cold == nil {
		t.FailNow()
	}
	for i, c := range cases {
		w, k := warm[i], cold[i]
		if !w.warm || k.warm {
			t.Errorf("%s: Started.warm %v on the pool's executor, %v on the other; want true and false", c.name, w.warm, k.warm)
		}
		if w.started != k.started {
			t.Errorf("%s: Started differs\nwarm: %s\ncold: %s", c.name, w.started, k.started)
		}
		for name, o := range map[string]sideOutcome{"warm": w, "cold": k} {
			if !strings.Contains(o.stdout, c.want) || o.exit != c.wantExit || o.term != executorv1.Termination_TERMINATION_EXITED {
				t.Errorf("%s %s: exit %d (%v), stdout %q; want exit %d, stdout holding %q\nstderr: %s", c.name, name, o.exit, o.term, o.stdout, c.wantExit, c.want, o.stderr)
			}
		}
		if c.report {
			if w.stdout != k.stdout {
				t.Logf("%s differs (reported, not asserted):\nwarm: %scold: %s", c.name, clipDataURLs(w.stdout), clipDataURLs(k.stdout))
			} else {
				t.Logf("%s: the same warm and cold: %s", c.name, clipDataURLs(w.stdout))
			}
			continue
		}
		if w.stdout != k.stdout || w.exit != k.exit || w.term != k.term {
			t.Errorf("%s: warm and cold differ\nwarm: exit %d %v stdout %q\ncold: exit %d %v stdout %q", c.name, w.exit, w.term, w.stdout, k.exit, k.term, k.stdout)
		}
		if c.stderrLines == 0 {
			if w.stderr != k.stderr {
				t.Errorf("%s: stderr differs\nwarm: %q\ncold: %q", c.name, w.stderr, k.stderr)
			}
			continue
		}
		wl, kl := strings.Split(strings.TrimSpace(w.stderr), "\n"), strings.Split(strings.TrimSpace(k.stderr), "\n")
		head := func(l []string) string { return strings.Join(l[:min(c.stderrLines, len(l))], "\n") }
		if head(wl) != head(kl) || wl[len(wl)-1] != kl[len(kl)-1] || len(kl) < c.stderrLines {
			t.Errorf("%s: stderr differs in its first %d lines or its last\nwarm:\n%s\ncold:\n%s", c.name, c.stderrLines, w.stderr, k.stderr)
		} else if w.stderr != k.stderr {
			t.Logf("%s: the stack tails differ (not asserted)\nwarm:\n%s\ncold:\n%s", c.name, w.stderr, k.stderr)
		}
	}
}

// dataURL is the body of a data: URL (node's --import flags), which
// clipDataURLs shortens in what the tests log.
var dataURL = regexp.MustCompile(`base64,[A-Za-z0-9+/=]{16,}`)

func clipDataURLs(s string) string {
	return dataURL.ReplaceAllStringFunc(s, func(m string) string {
		return fmt.Sprintf("base64,%s…(%d bytes)", m[7:23], len(m)-7)
	})
}

// sandboxSeen is what one execution of TestWarmNeverShared saw of its
// sandbox, from inside and from the host.
type sandboxSeen struct {
	ID       string
	PidNS    string   `json:"pid_ns"`
	NetNS    string   `json:"net_ns"`
	CgroupNS string   `json:"cgroup_ns"`
	Cgroup   string   `json:"cgroup"`
	Tmp      []string `json:"tmp"`
	// HostCgroup is the task's /proc/PID/cgroup on the host: inside, the
	// sandbox's cgroup namespace shows its own cgroup as "/".
	HostCgroup string
}

// TestWarmNeverShared runs executions one after another on a pool of two,
// all warm: each sees its own PID namespace, network namespace, cgroup
// namespace and cgroup, and a /tmp holding only the file it wrote. Each
// program holds until the test, having read what it printed, has opened
// its namespaces from the host: held open, a namespace cannot be freed and
// its inode number handed to a later sandbox, so equal numbers can only
// mean a shared sandbox.
func TestWarmNeverShared(t *testing.T) {
	s := startWarmStack(t, 2)
	c, err := env.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := containerdtest.WithNamespace(context.Background())
	const runs = 4
	var seen []sandboxSeen
	for i := range runs {
		waitWarm(t, s.e.app.MetricsAddr(), 2)
		// The handler comes first: the test signals as soon as it has
		// read the line.
		stream, err := s.e.client.Execute(ctx, code(fmt.Sprintf(`process.on("SIGUSR2", () => process.exit(0));
setTimeout(() => process.exit(9), 30000);
const fs = require("fs");
fs.writeFileSync("/tmp/run-%d", "mine");
const ns = n => fs.readlinkSync("/proc/self/ns/" + n);
console.log(JSON.stringify({pid_ns: ns("pid"), net_ns: ns("net"), cgroup_ns: ns("cgroup"), cgroup: fs.readFileSync("/proc/self/cgroup", "utf8"), tmp: fs.readdirSync("/tmp")}));`, i)))
		if err != nil {
			t.Fatal(err)
		}
		out, started := stdoutUntil(t, stream, "\n")
		line, _, _ := strings.Cut(out, "\n")
		var got sandboxSeen
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("run %d printed %q: %v", i, line, err)
		}
		got.ID = started.GetExecutionId()
		task := runningTask(ctx, t, c, got.ID)
		pid := int(task.Pid())
		cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			t.Fatal(err)
		}
		got.HostCgroup = string(cg)
		for name, inside := range map[string]string{"pid": got.PidNS, "net": got.NetNS, "cgroup": got.CgroupNS} {
			path := fmt.Sprintf("/proc/%d/ns/%s", pid, name)
			if host, err := os.Readlink(path); err != nil || host != inside {
				t.Errorf("run %d: %s is %q from the host (%v), %q from inside", i, path, host, err, inside)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
		}
		if err := task.Kill(ctx, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		res := finish(t, stream)
		if res.GetExitCode() != 0 || !started.GetWarm() {
			t.Errorf("run %d: exit %d, warm %v; want 0 and warm", i, res.GetExitCode(), started.GetWarm())
		}
		if want := []string{fmt.Sprintf("run-%d", i)}; !slices.Equal(got.Tmp, want) {
			t.Errorf("run %d: /tmp holds %v, want only %v", i, got.Tmp, want)
		}
		seen = append(seen, got)
	}
	t.Logf("inside, /proc/self/cgroup reads %q (run 0)", seen[0].Cgroup)
	for i := range seen {
		for j := range i {
			a, b := seen[i], seen[j]
			for what, same := range map[string]bool{"execution id": a.ID == b.ID, "PID namespace": a.PidNS == b.PidNS,
				"network namespace": a.NetNS == b.NetNS, "cgroup namespace": a.CgroupNS == b.CgroupNS, "cgroup": a.HostCgroup == b.HostCgroup} {
				if same {
					t.Errorf("runs %d and %d share their %s\n%+v\n%+v", j, i, what, b, a)
				}
			}
		}
	}
}

// runningTask loads the task of container id, which must be running.
func runningTask(ctx context.Context, t *testing.T, c *containerd.Client, id string) containerd.Task {
	t.Helper()
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		t.Fatalf("container %s: %v", id, err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatalf("task of %s: %v", id, err)
	}
	return task
}

// finish reads stream to its end and returns the result.
func finish(t *testing.T, stream executorv1.ExecutorService_ExecuteClient) *executorv1.Result {
	t.Helper()
	var res *executorv1.Result
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if r := ev.GetResult(); r != nil {
			res = r
		}
	}
	if res == nil {
		t.Fatal("the stream ended without a result")
	}
	return res
}

// TestWarmPreClaimDenied enters the network namespace of a pooled sandbox
// before any execution claims it and tries the egress path from there: a
// DNS query for a name the policy allows, plain HTTP to a host the policy
// allows over http, and TLS to a host and path it allows. None gets
// through (nothing reaches a stand-in), and the execution that then claims
// that sandbox (the pool holds one) sees none of it in its events or
// network log, while its own request goes through.
func TestWarmPreClaimDenied(t *testing.T) {
	s := startWarmStack(t, 1)
	waitWarm(t, s.e.app.MetricsAddr(), 1)
	id, pid := pooledSandbox(t)
	gw := defaultGateway(t, pid)
	var dnsConn, httpConn, tlsConn net.Conn
	err := inNetnsOf(pid, func() error {
		var err error
		d := net.Dialer{Timeout: 5 * time.Second}
		if dnsConn, err = d.Dial("udp4", net.JoinHostPort(gw, "53")); err != nil {
			return err
		}
		if httpConn, err = d.Dial("tcp4", net.JoinHostPort(gw, "80")); err != nil {
			return fmt.Errorf("http: %w", err)
		}
		if tlsConn, err = d.Dial("tcp4", net.JoinHostPort(gw, "443")); err != nil {
			return fmt.Errorf("https: %w", err)
		}
		return nil
	})
	// A connection refused outright is a denial too; the proxy is
	// expected to accept and refuse.
	if err != nil {
		t.Logf("from the pooled sandbox %s: %v", id, err)
	}
	if dnsConn != nil {
		defer dnsConn.Close()
		rcode, answers, err := dnsQuery(dnsConn, "api.github.test")
		t.Logf("DNS query for api.github.test before claim: rcode %d, %d answers, %v", rcode, answers, err)
		if err == nil && rcode == 0 && answers > 0 {
			t.Errorf("api.github.test resolved for an unclaimed sandbox")
		}
	}
	if httpConn != nil {
		defer httpConn.Close()
		status, body, err := httpGet(httpConn, "api.github.test", "/preclaim")
		t.Logf("http://api.github.test/preclaim before claim: %d %s %v", status, body, err)
		if err == nil && (status != http.StatusForbidden || !strings.Contains(body, "no-execution")) {
			t.Errorf("http://api.github.test/preclaim answered %d %s; want 403 from rule no-execution", status, body)
		}
	}
	if tlsConn != nil {
		defer tlsConn.Close()
		tc := tls.Client(tlsConn, &tls.Config{ServerName: "pay.test", InsecureSkipVerify: true}) // #nosec G402 -- the proxy's leaf is not what is tested
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			t.Logf("TLS to pay.test before claim: %v", err)
		} else if status, body, err := httpGet(tc, "pay.test", "/v1/products/preclaim"); err == nil && status != http.StatusForbidden {
			t.Errorf("https://pay.test/v1/products/preclaim answered %d %s before claim", status, body)
		}
	}
	if got := s.pay.requests(); len(got) != 0 || s.githubSeen.String() != "" {
		t.Errorf("a stand-in was reached from an unclaimed sandbox: pay.test %v, api.github.test %q", got, s.githubSeen.String())
	}

	r := s.e.mustRun(t, code(`const r = await fetch("https://pay.test/v1/products/claimed"); console.log(r.status, await r.text());`))
	if r.started.GetExecutionId() != id || !r.started.GetWarm() {
		t.Errorf("execution %s (warm %v), want it to claim the pool's one sandbox %s", r.started.GetExecutionId(), r.started.GetWarm(), id)
	}
	if !strings.HasPrefix(string(r.stdout), `200 {"stand_in":"pay.test"`) {
		t.Errorf("the claimed sandbox's own request: %s %s", r.stdout, r.stderr)
	}
	for _, ev := range r.network {
		if ev.GetHost() != "pay.test" || strings.Contains(ev.GetUrl(), "preclaim") || ev.GetKind() == executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED {
			t.Errorf("the execution sees an event not its own: %v", ev)
		}
	}
	if l := r.result.GetNetworkLog(); len(l) != 1 || !strings.HasSuffix(l[0].GetUrl(), "/v1/products/claimed") {
		t.Errorf("network log %v, want only the execution's own request", l)
	}
	if got := s.pay.requests(); len(got) != 1 || !strings.Contains(got[0], "/v1/products/claimed") || s.githubSeen.String() != "" {
		t.Errorf("stand-ins saw pay.test %v, api.github.test %q; want the claimed request only", got, s.githubSeen.String())
	}
	for _, l := range logLines(s.logs) {
		if l["execution_id"] == id && strings.Contains(fmt.Sprint(l), "api.github.test") {
			t.Errorf("the executor logged a pre-claim attempt under the execution: %v", l)
		}
	}
}

// pooledSandbox returns the id and task pid of the one ready pooled
// sandbox (warmLabelFilter, task running).
func pooledSandbox(t *testing.T) (string, int) {
	t.Helper()
	c, err := env.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := containerdtest.WithNamespace(context.Background())
	cs, err := c.Containers(ctx, warmLabelFilter)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	var pid int
	for _, ctr := range cs {
		task, err := ctr.Task(ctx, nil)
		if err != nil {
			continue
		}
		if st, err := task.Status(ctx); err == nil && st.Status == containerd.Running {
			ids, pid = append(ids, ctr.ID()), int(task.Pid())
		}
	}
	if len(ids) != 1 {
		t.Fatalf("running containers with %s: %v, want one", warmLabelFilter, ids)
	}
	return ids[0], pid
}

// defaultGateway reads the default route's gateway in the network
// namespace of pid: the host end of the sandbox's veth, where nftables
// sends its traffic on to the proxy.
func defaultGateway(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/route", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 3 || f[1] != "00000000" {
			continue
		}
		g, err := strconv.ParseUint(f[2], 16, 32)
		if err != nil {
			t.Fatal(err)
		}
		ip := make(net.IP, 4)
		binary.LittleEndian.PutUint32(ip, uint32(g))
		return ip.String()
	}
	t.Fatalf("no default route in the network namespace of %d:\n%s", pid, b)
	return ""
}

// inNetnsOf runs fn on a locked thread inside the network namespace of
// pid: sockets fn opens belong to it, and keep to it after.
func inNetnsOf(pid int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread unless the thread is back in its own
		// namespace: else it dies with the goroutine.
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter the network namespace of %d: %w", pid, err)
			return
		}
		errc <- fn()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

// dnsQuery sends an A query for name on conn and returns the answer's
// rcode and answer count.
func dnsQuery(conn net.Conn, name string) (rcode, answers int, err error) {
	q := []byte{0x5a, 0x17, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, label := range strings.Split(name, ".") {
		q = append(append(q, byte(len(label))), label...)
	}
	q = append(q, 0, 0, 1, 0, 1)
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(q); err != nil {
		return 0, 0, err
	}
	b := make([]byte, 512)
	n, err := conn.Read(b)
	if err != nil {
		return 0, 0, err
	}
	if n < 12 || b[0] != q[0] || b[1] != q[1] {
		return 0, 0, fmt.Errorf("not an answer to the query: % x", b[:n])
	}
	return int(b[3] & 0x0f), int(binary.BigEndian.Uint16(b[6:8])), nil
}

// httpGet sends one GET on conn and reads the answer.
func httpGet(conn net.Conn, host, path string) (int, string, error) {
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host); err != nil {
		return 0, "", err
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 4096))
	return res.StatusCode, string(body), err
}

// poolInventory is what an executor's pool holds in containerd, the state
// dir, the network namespaces, veths and nftables.
type poolInventory struct {
	// leftovers are leftovers' lines: containers, tasks, snapshots and
	// mounts by id, processes and shims by pid, code dirs by id.
	leftovers []string
	// netns are the tests' named network namespaces (none is expected:
	// a sandbox's namespace is its runtime's, not bind-mounted).
	netns []string
	veths int
	nft   census
}

func takePoolInventory(t *testing.T, dir string) poolInventory {
	t.Helper()
	inv := poolInventory{leftovers: leftovers(t, dir, ""), nft: census{}}
	for _, l := range networkLeftovers() {
		if strings.HasPrefix(l, "veth ") {
			inv.veths++
		} else {
			inv.netns = append(inv.netns, l)
		}
	}
	nftCensus(t, inv.nft)
	return inv
}

func (inv poolInventory) count(kind string) (n int) {
	for _, l := range inv.leftovers {
		if strings.HasPrefix(l, kind+" ") {
			n++
		}
	}
	return n
}

// TestWarmLeftoversAfterKill runs the executor binary with egress and a
// full pool of two, SIGKILLs it, and starts another on the same containerd
// namespace and state dir: once it serves (its start-up sweep done),
// nothing of the old pool is left (no container, task, snapshot, mount,
// process, shim or code dir of it, nor a named network namespace: a
// sandbox's own goes with its processes), and once its own pool is
// full it holds just as much as the old one did (veths, named by address,
// may come back, so they are counted, as are the chains, rules, sets and
// set elements of the executor's nftables table: its rules match the
// sandboxes' interfaces by prefix, so a sandbox adds no element of its
// own today).
// Then it is stopped with SIGTERM: the pool is drained, nothing is left.
func TestWarmLeftoversAfterKill(t *testing.T) {
	requireRunc(t)
	dir := t.TempDir()
	// What is there before (a sandbox another test run left, say) is not
	// this test's to answer for.
	before := takePoolInventory(t, dir)
	ours := func(inv poolInventory) []string {
		return slices.DeleteFunc(append(inv.leftovers, inv.netns...), func(l string) bool {
			return slices.Contains(before.leftovers, l) || slices.Contains(before.netns, l)
		})
	}
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	eg := startEgress(t, ports, basePolicy)
	start := func() (*proc, string) {
		t.Helper()
		metrics := freeAddr(t)
		p := startProc(t, dir, append(eg.flags(), warmFlags(2, metrics)...)...)
		return p, metrics
	}
	p, metrics := start()
	px := startProxy(t, ports, "unix://"+eg.decisionSocket, nil, "")
	waitWarm(t, metrics, 2)
	old := takePoolInventory(t, dir)
	oldLines := ours(old)
	t.Logf("full pool: %d things, %d veths, nft %v; before it: %v", len(oldLines), old.veths, old.nft, before.leftovers)
	if old.count("container") != 2 || old.count("task") != 2 || old.count("process in a sandbox cgroup") < 4 || old.veths != 2 {
		t.Fatalf("a full pool of two holds %v and %d veths; want two containers, tasks and veths, and their inits and nodes", oldLines, old.veths)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	if len(ours(takePoolInventory(t, dir))) == 0 {
		t.Fatal("nothing left after SIGKILL; the test would prove nothing")
	}

	p2, metrics2 := start()
	// Swept means gone within a few seconds: shims exit shortly after
	// their task is deleted.
	still := func(lines []string) []string {
		now := ours(takePoolInventory(t, dir))
		return slices.DeleteFunc(slices.Clone(lines), func(l string) bool { return !slices.Contains(now, l) })
	}
	left := still(oldLines)
	for deadline := time.Now().Add(5 * time.Second); len(left) > 0 && time.Now().Before(deadline); left = still(oldLines) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, l := range left {
		t.Errorf("the old pool's %s is still there after the new executor's start-up sweep", l)
	}
	waitWarm(t, metrics2, 2)
	refilled := takePoolInventory(t, dir)
	for _, kind := range []string{"container", "task", "snapshot", "code dir"} {
		if refilled.count(kind) != old.count(kind) {
			t.Errorf("%d %ss with the new full pool, %d with the old", refilled.count(kind), kind, old.count(kind))
		}
	}
	if len(refilled.netns) != len(old.netns) || refilled.veths != old.veths || refilled.nft.String() != old.nft.String() {
		t.Errorf("new full pool: %v, %d veths, nft %v; the old: %v, %d veths, nft %v", refilled.netns, refilled.veths, refilled.nft, old.netns, old.veths, old.nft)
	}

	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p2.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the executor did not exit after SIGTERM")
	}
	px.stop()
	drained := ours(takePoolInventory(t, dir))
	for deadline := time.Now().Add(5 * time.Second); len(drained) > 0 && time.Now().Before(deadline); drained = ours(takePoolInventory(t, dir)) {
		time.Sleep(50 * time.Millisecond)
	}
	if len(drained) > 0 {
		t.Errorf("left behind by the drained pool:\n%s", strings.Join(drained, "\n"))
	}
	if inv := takePoolInventory(t, dir); inv.veths != before.veths || inv.nft["nft set elements"] != 0 {
		t.Errorf("%d veths (%d before) and nftables %v after a drained pool", inv.veths, before.veths, inv.nft)
	}
}

// TestWarmLimitsAtClaim holds warm executions to the request's limits,
// applied at claim, against the same programs run cold on the same
// executor (a NODE_ variable sends a request down the cold path): memory
// (OOM), CPU (throttled), pids (EAGAIN); and a warm hello world's wall and
// CPU time count the program's run, not the pool's boot.
func TestWarmLimitsAtClaim(t *testing.T) {
	requireRunc(t)
	drainedAtShutdown(t)
	e := startExecutor(t, executorOpts{flags: warmFlags(2, "127.0.0.1:0")})
	metrics := e.app.MetricsAddr()
	t.Logf("the pool of two was full %v after the executor served", waitWarm(t, metrics, 2))
	// exec runs req warm (after the pool is full) or cold, and checks which
	// it was; warm, it also returns how long the pool took to refill after
	// the previous run.
	exec := func(req *executorv1.ExecuteRequest, warm bool) (*run, time.Duration) {
		t.Helper()
		refill := waitWarm(t, metrics, 2)
		req.Env = nil
		if !warm {
			req.Env = map[string]string{"NODE_SANDPIT_E2E_COLD": "1"}
		}
		r := e.mustRun(t, req)
		if r.started.GetWarm() != warm {
			t.Fatalf("Started.warm %v, want %v", r.started.GetWarm(), warm)
		}
		return r, refill
	}

	oom := code(`const a = []; for (let i = 0; i < 200; i++) a.push(Buffer.alloc(1 << 20, 1)); console.log("allocated 200 MiB");`)
	oom.Limits = &executorv1.Limits{MemoryBytes: 64 << 20}
	for _, warm := range []bool{true, false} {
		r, _ := exec(oom, warm)
		res := r.result
		t.Logf("200 MiB under 64 MiB, warm %v: %v, peak %d MiB", warm, res.GetTermination(), res.GetPeakMemoryBytes()>>20)
		if res.GetTermination() != executorv1.Termination_TERMINATION_OOM || !res.GetOomKilled() || strings.Contains(string(r.stdout), "allocated") {
			t.Errorf("warm %v: result %v, stdout %q; want OOM", warm, res, r.stdout)
		}
		if res.GetPeakMemoryBytes() > 64<<20 {
			t.Errorf("warm %v: peak memory %d above the 64 MiB limit", warm, res.GetPeakMemoryBytes())
		}
	}

	busy := code(`while (true) {}`)
	busy.Limits = &executorv1.Limits{Timeout: durationpb.New(2 * time.Second), CpuMillicores: 100}
	ratio := map[bool]float64{}
	for _, warm := range []bool{false, true} {
		res, _ := exec(busy, warm)
		wall, cpu := res.result.GetWallTime().AsDuration(), res.result.GetCpuTime().AsDuration()
		ratio[warm] = float64(cpu) / float64(wall)
		t.Logf("busy loop at 100 millicores, warm %v: cpu %v over wall %v (%.3f)", warm, cpu, wall, ratio[warm])
		if res.result.GetTermination() != executorv1.Termination_TERMINATION_TIMEOUT {
			t.Errorf("warm %v: %v, want the timeout", warm, res.result)
		}
	}
	// A tenth of a core is a ratio of 0.1; unthrottled, a busy loop gets
	// half a core or more even on a shared machine.
	if ratio[true] > 0.3 || ratio[true] > 2*ratio[false]+0.05 {
		t.Errorf("warm cpu/wall %.3f at 100 millicores, cold %.3f", ratio[true], ratio[false])
	}

	bomb := code(`const { spawn } = require("child_process");
let reported = false;
function bomb() {
  const c = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
  c.on("error", e => { if (!reported) { reported = true; console.log("spawn failed: " + e.code); } });
  setImmediate(bomb);
}
bomb();`)
	bomb.Limits = &executorv1.Limits{Timeout: durationpb.New(4 * time.Second), Pids: 64, MemoryBytes: 1024 << 20}
	for _, warm := range []bool{true, false} {
		r, _ := exec(bomb, warm)
		if !strings.Contains(string(r.stdout)+string(r.stderr), "EAGAIN") {
			t.Errorf("warm %v: no spawn failed with EAGAIN under a pids limit of 64\nstdout: %s\nstderr: %.2000s", warm, r.stdout, r.stderr)
		}
	}

	const rounds = 5
	times := map[bool][2][]time.Duration{}
	var refills []time.Duration
	for range rounds {
		for _, warm := range []bool{true, false} {
			r, refill := exec(code(`console.log("hello")`), warm)
			if string(r.stdout) != "hello\n" {
				t.Fatalf("hello world printed %q", r.stdout)
			}
			wt := times[warm]
			wt[0], wt[1] = append(wt[0], r.result.GetWallTime().AsDuration()), append(wt[1], r.result.GetCpuTime().AsDuration())
			times[warm] = wt
			if warm {
				refills = append(refills, refill)
			}
		}
	}
	median := func(ds []time.Duration) time.Duration { return percentile(ds, 50) }
	wWall, wCPU, cWall, cCPU := median(times[true][0]), median(times[true][1]), median(times[false][0]), median(times[false][1])
	boot := time.Duration(metricValue(executorMetrics(t, metrics), "sandpit_warm_boot_seconds", "", "") * float64(time.Second))
	t.Logf("hello world, median of %d: warm wall %v cpu %v, cold wall %v cpu %v; mean boot of a warm sandbox %v; waits for the pool to refill %v",
		rounds, wWall, wCPU, cWall, cCPU, boot, refills)
	// A warm run's wall time is its program's, well under a boot (which
	// starts node too; cold's wall time counts node's start, a few tens
	// of milliseconds, too little a margin to assert under load); its
	// CPU time leaves node's start out.
	if wWall*2 > boot || wCPU*2 > cCPU {
		t.Errorf("a warm hello world's wall %v and cpu %v are not well under a boot (%v) and cold's %v and %v: the pool's boot counted?", wWall, wCPU, boot, cWall, cCPU)
	}
}
