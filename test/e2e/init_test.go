package e2e

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// orphans is a program whose 40 children each leave a grandchild behind
// (detached, so it outlives its parent and is handed to PID 1), ten at a
// time so the pids limit is never what stops it. Once all are gone it
// counts the processes left, the zombies among them, and the threads
// against the count at its start.
const orphans = `
const fs = require("fs"), { spawn } = require("child_process");
const procs = () => fs.readdirSync("/proc").filter(p => /^\d+$/.test(p));
const state = p => { try { return fs.readFileSync("/proc/" + p + "/stat", "utf8").replace(/^.*\) /, "")[0]; } catch { return "gone"; } };
const threads = () => procs().reduce((n, p) => { try { return n + fs.readdirSync("/proc/" + p + "/task").length; } catch { return n; } }, 0);
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  await sleep(200); // node's own threads are all up
  const start = threads();
  const child = "require('child_process').spawn(process.execPath, ['-e', 'setTimeout(() => {}, 50)'], { detached: true, stdio: 'ignore' }).unref()";
  for (let batch = 0; batch < 4; batch++) {
    await Promise.all(Array.from({ length: 10 }, () => new Promise((res, rej) => {
      spawn(process.execPath, ["-e", child], { stdio: "ignore" }).on("exit", res).on("error", rej);
    })));
    // The grandchildren end by themselves; wait until none runs.
    for (let i = 0; i < 300 && procs().some(p => p != process.pid && p != "1" && state(p) !== "Z"); i++) await sleep(20);
  }
  await sleep(200);
  const left = procs().filter(p => p != process.pid && p != "1");
  console.log(JSON.stringify({ start, end: threads(), left: left.length, zombies: left.filter(p => state(p) === "Z").length }));
})();
`

// TestInitReapsOrphans runs 40 orphaned grandchildren: with tini as PID 1
// none is left as a zombie and the thread count (what the pids limit
// counts) is back at its start. The same program with node as PID 1
// (--init "") shows the 40 zombies, so the test tells the two apart.
func TestInitReapsOrphans(t *testing.T) {
	type count struct{ Start, End, Left, Zombies int }
	req := code(orphans)
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(60 * time.Second), MemoryBytes: 512 << 20}

	var got count
	probe(t, startExecutor(t, executorOpts{}), req, &got)
	if got.Zombies != 0 || got.Left != 0 || got.End != got.Start {
		t.Errorf("with the init: %+v, want no process left, no zombie, and the thread count back at its start", got)
	}

	var without count
	probe(t, startExecutor(t, executorOpts{flags: []string{"--init", ""}}), req, &without)
	if without.Zombies != 40 || without.End != without.Start+40 {
		t.Errorf("node as PID 1: %+v, want the 40 zombies this test is about (else it proves nothing)", without)
	}
}

// TestSignalsAndExitStatusAsWithNodeAlone runs programs that end by
// exit, by a signal they send themselves, by abort, or that handle a
// signal, both in a sandbox and with the same node binary run bare on the
// host: the exit code and signal the Result reports are what the host saw,
// and so is the output. A signal sent to PID 1 (the init) reaches node.
func TestSignalsAndExitStatusAsWithNodeAlone(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	host := hostNode(t)
	for _, tt := range []struct{ name, src string }{
		{"exit", `console.log("out"); process.exit(42)`},
		{"uncaught", `throw new Error("boom")`},
		{"SIGTERM to itself", `process.kill(process.pid, "SIGTERM"); setTimeout(() => console.log("survived"), 500)`},
		{"SIGKILL to itself", `process.kill(process.pid, "SIGKILL"); setTimeout(() => console.log("survived"), 500)`},
		{"SIGINT to itself", `process.kill(process.pid, "SIGINT"); setTimeout(() => console.log("survived"), 500)`},
		{"handled SIGTERM", `process.on("SIGTERM", () => { console.log("handled"); process.exit(3); }); process.kill(process.pid, "SIGTERM"); setTimeout(() => {}, 5000)`},
		{"abort", `process.abort()`},
		{"SIGUSR2 ignored", `process.on("SIGUSR2", () => console.log("usr2")); process.kill(process.pid, "SIGUSR2"); setTimeout(() => process.exit(5), 200)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantCode, wantSig, wantOut := runOnHost(t, host, tt.src)
			r := e.mustRun(t, code(tt.src))
			if r.result.GetExitCode() != wantCode || r.result.GetSignal() != wantSig || string(r.stdout) != wantOut {
				t.Errorf("sandbox: exit %d, signal %q, stdout %q; node alone: exit %d, signal %q, stdout %q",
					r.result.GetExitCode(), r.result.GetSignal(), r.stdout, wantCode, wantSig, wantOut)
			}
		})
	}

	// PID 1 is the init, which forwards what it is sent to node.
	t.Run("signal to PID 1", func(t *testing.T) {
		r := e.mustRun(t, code(`
process.on("SIGUSR1", () => { console.log("usr1 from pid 1"); process.kill(1, "SIGTERM"); });
process.kill(1, "SIGUSR1");
setTimeout(() => console.log("survived"), 5000);
`))
		if string(r.stdout) != "usr1 from pid 1\n" || r.result.GetSignal() != "SIGTERM" || r.result.GetExitCode() != 143 {
			t.Errorf("stdout %q, exit %d, signal %q; want the handler's line, then SIGTERM (143)", r.stdout, r.result.GetExitCode(), r.result.GetSignal())
		}
	})
}

// hostNode is a node on the host to compare with: the image's own binary
// is not runnable outside it (its libraries are the image's), so the
// host's node stands in; exit statuses and signals do not differ between
// node versions.
func hostNode(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node on the host (make test installs it): %v", err)
	}
	return p
}

// runOnHost runs src with node bare on the host and returns the exit code
// and signal as the executor would report them (128+n and the name for
// signal n) and stdout.
func runOnHost(t *testing.T, node, src string) (int32, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "-e", src)
	out, err := cmd.Output()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("node on the host: %v", err)
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return int32(128 + ws.Signal()), unix.SignalName(ws.Signal()), string(out)
	}
	return int32(ws.ExitStatus()), "", string(out)
}

// TestImageWithoutTheInitFailsClearly names an init the image does not
// have: the execution fails with Internal, leaves nothing behind, and the
// executor's log says what to do.
func TestImageWithoutTheInitFailsClearly(t *testing.T) {
	logs := &lockedBuffer{}
	e := startExecutor(t, executorOpts{logs: logs, flags: []string{"--init", "/usr/bin/no-such-init"}})
	r := e.execute(context.Background(), code(`console.log("never")`))
	if status.Code(r.err) != codes.Internal || len(r.stdout) != 0 {
		t.Fatalf("execute: %v, stdout %q; want Internal and no output", r.err, r.stdout)
	}
	if !strings.Contains(logs.String(), `the image has no /usr/bin/no-such-init`) {
		t.Errorf("the executor's log does not say the init is missing:\n%s", logs.String())
	}
	requireNoLeftovers(t, stateDir, "")
}
