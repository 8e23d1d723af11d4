package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

func TestBusyLoopIsKilledAtTimeout(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	req := code(`while (true) {}`)
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(time.Second)}
	r := e.mustRun(t, req)
	res := r.result
	if !res.GetTimedOut() || res.GetTermination() != executorv1.Termination_TERMINATION_TIMEOUT || res.GetSignal() != "SIGKILL" {
		t.Errorf("result %v, want timed out by SIGKILL", res)
	}
	if w := res.GetWallTime().AsDuration(); w < time.Second || w > 3*time.Second {
		t.Errorf("wall time %v, want about 1s", w)
	}
	// Other tests may share the two cores; a busy second still shows up.
	if c := res.GetCpuTime().AsDuration(); c < 200*time.Millisecond {
		t.Errorf("cpu time %v for a busy second", c)
	}
	requireNoLeftovers(t, stateDir, "")
}

func TestCPUQuotaThrottles(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	req := code(`while (true) {}`)
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(2 * time.Second), CpuMillicores: 250}
	res := e.mustRun(t, req).result
	wall, cpu := res.GetWallTime().AsDuration(), res.GetCpuTime().AsDuration()
	// A quarter core for two seconds is half a second of CPU; allow slack
	// for node's start and the CFS period's granularity.
	if cpu > wall*45/100 {
		t.Errorf("cpu %v over wall %v with a quota of 0.25 core", cpu, wall)
	}
}

func TestMemoryBombIsOOMKilled(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	req := code(`const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1));`)
	req.Limits = &executorv1.Limits{MemoryBytes: 128 << 20}
	res := e.mustRun(t, req).result
	if !res.GetOomKilled() || res.GetTermination() != executorv1.Termination_TERMINATION_OOM || res.GetSignal() != "SIGKILL" {
		t.Errorf("result %v, want OOM killed", res)
	}
	if res.GetPeakMemoryBytes() < 100<<20 || res.GetPeakMemoryBytes() > 128<<20 {
		t.Errorf("peak memory %d, want close to the 128 MiB limit", res.GetPeakMemoryBytes())
	}
	requireNoLeftovers(t, stateDir, "")
}

func TestForkBombHitsPidsLimit(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	req := code(`
const { spawn } = require("child_process");
let reported = false;
function bomb() {
  const c = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
  c.on("error", e => { if (!reported) { reported = true; console.log("spawn failed: " + e.code); } });
  setImmediate(bomb);
}
bomb();
`)
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(4 * time.Second), Pids: 64, MemoryBytes: 1024 << 20}
	r := e.mustRun(t, req)
	if !strings.Contains(string(r.stdout)+string(r.stderr), "EAGAIN") {
		t.Errorf("no spawn failed with EAGAIN under the pids limit\nstdout: %s\nstderr: %.2000s", r.stdout, r.stderr)
	}
	requireNoLeftovers(t, stateDir, "")
	// The host, and the executor, are fine: the next execution runs.
	if got := string(e.mustRun(t, code(`console.log(1+1)`)).stdout); got != "2\n" {
		t.Errorf("execution after the fork bomb printed %q", got)
	}
}

func TestDetachedChildDoesNotOutliveExecution(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	marker := fmt.Sprintf("sandpit-detached-%d", time.Now().UnixNano())
	r := e.mustRun(t, code(fmt.Sprintf(`
const { spawn } = require("child_process");
const c = spawn(process.execPath, ["-e", "/*%s*/ setInterval(() => {}, 1000)"], { detached: true, stdio: "ignore" });
c.unref();
console.log("child", c.pid);
`, marker)))
	if !strings.HasPrefix(string(r.stdout), "child ") || r.result.GetExitCode() != 0 {
		t.Fatalf("the program did not start its child: %s %s", r.stdout, r.stderr)
	}
	requireNoLeftovers(t, stateDir, marker)
}

func TestOutputFloodIsCutAtCap(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	// Blocking writes: process.stdout.write would queue in node and hit
	// the memory limit first.
	req := code(`const b = Buffer.alloc(65536, 97); for (;;) require("fs").writeSync(1, b);`)
	req.Limits = &executorv1.Limits{OutputBytes: 1 << 20}
	r := e.mustRun(t, req)
	res := r.result
	if len(r.stdout) != 1<<20 || res.GetStdoutBytes() != 1<<20 {
		t.Errorf("got %d stdout bytes (result says %d), want exactly 1 MiB", len(r.stdout), res.GetStdoutBytes())
	}
	if !res.GetOutputTruncated() || res.GetTermination() != executorv1.Termination_TERMINATION_OUTPUT_LIMIT {
		t.Errorf("result %v, want output truncated", res)
	}
	if bytes.Count(r.stdout, []byte("a")) != len(r.stdout) {
		t.Error("stdout holds bytes the program did not write")
	}
	requireNoLeftovers(t, stateDir, "")
}

// TestOutputFloodKeepsExecutorMemoryBounded streams 64 MiB to a client that
// reads slowly and checks that the executor's heap does not grow with it:
// back-pressure slows the program instead.
func TestOutputFloodKeepsExecutorMemoryBounded(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	req := code(`const b = Buffer.alloc(65536, 97); for (let i = 0; i < 1024; i++) require("fs").writeSync(1, b);`)
	req.Limits = &executorv1.Limits{OutputBytes: 64 << 20, Timeout: durationpb.New(time.Minute)}

	// A low GC target keeps garbage from passing for retained memory: what
	// is measured is what the executor holds on to, not what it churns.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	stopSampling := heapPeak(5 * time.Millisecond)

	stream, err := e.client.Execute(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var res *executorv1.Result
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n += len(ev.GetStdout().GetData())
		if ev.GetResult() != nil {
			res = ev.GetResult()
		}
		if n%(4<<20) < 32<<10 {
			time.Sleep(20 * time.Millisecond) // a slow reader
		}
	}
	peak := stopSampling()
	if n != 64<<20 || res.GetOutputTruncated() || res.GetExitCode() != 0 {
		t.Fatalf("got %d bytes, result %v; want 64 MiB, complete", n, res)
	}
	growth := int64(peak) - int64(base.HeapInuse)
	t.Logf("heap in use: base %d MiB, peak %d MiB while streaming 64 MiB", base.HeapInuse>>20, peak>>20)
	if growth > 16<<20 {
		t.Errorf("heap grew by %d MiB while streaming 64 MiB; output is being buffered", growth>>20)
	}
}

func TestClientCancelKillsSandbox(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := e.client.Execute(ctx, code(`console.log("up"); setInterval(() => {}, 1000);`))
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("stream ended before output: %v", err)
		}
		if ev.GetStdout() != nil {
			break
		}
	}
	cancel()
	requireNoLeftovers(t, stateDir, "")
	if e.app.Slots().InFlight() != 0 {
		t.Errorf("%d slots still taken after the cancelled execution", e.app.Slots().InFlight())
	}
}
