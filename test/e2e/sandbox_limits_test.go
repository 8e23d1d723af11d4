package e2e

import (
	"strconv"
	"strings"
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// TestEveryRlimitIsSetOnPurpose reads /proc/self/limits in a sandbox: each
// limit the executor sets has its documented value, not the shim's.
func TestEveryRlimitIsSetOnPurpose(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	var got map[string]string
	req := code(`
const fs = require("fs");
const out = {};
for (const line of fs.readFileSync("/proc/self/limits", "utf8").split("\n").slice(1)) {
  const m = line.match(/^(.+?)\s{2,}(\S+)\s+(\S+)/);
  if (m) out[m[1]] = m[2] + "/" + m[3];
}
console.log(JSON.stringify(out));
`)
	req.Limits = &executorv1.Limits{TmpBytes: 4 << 20, OpenFiles: 512}
	probe(t, e, req, &got)
	both := func(n uint64) string { s := strconv.FormatUint(n, 10); return s + "/" + s }
	for name, want := range map[string]string{
		"Max open files":        both(512),
		"Max core file size":    both(0),
		"Max locked memory":     both(64 << 10),
		"Max pending signals":   both(1024),
		"Max msgqueue size":     both(0),
		"Max stack size":        both(8 << 20),
		"Max file size":         both(4<<20 + 1<<20),
		"Max resident set":      "unlimited/unlimited", // the memory cgroup bounds it
		"Max address space":     "unlimited/unlimited", // V8 reserves far more than it uses
		"Max cpu time":          "unlimited/unlimited", // the timeout and CPU quota bound it
		"Max realtime priority": both(0),
		"Max realtime timeout":  "unlimited/unlimited",
		"Max nice priority":     both(0),
		"Max data size":         "unlimited/unlimited",
		"Max file locks":        "unlimited/unlimited",
	} {
		if got[name] != want {
			t.Errorf("%s = %q, want %q (all: %v)", name, got[name], want, got)
		}
	}
	// The host's, per uid: it must never be what stops a sandbox before
	// its pids limit does.
	if n, err := strconv.Atoi(strings.Split(got["Max processes"], "/")[0]); got["Max processes"] != "unlimited/unlimited" && (err != nil || n < 1024) {
		t.Errorf("Max processes = %q, want at least the largest pids limit", got["Max processes"])
	}
}

// TestTmpInodesRunOutWithENOSPC creates empty files in /tmp until one
// fails: the failure is ENOSPC at /tmp's inode limit (one per 4 KiB of its
// size), and the program goes on, rather than the sandbox being OOM-killed
// by the kernel memory the inodes cost.
func TestTmpInodesRunOutWithENOSPC(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	var got struct {
		Files int
		Err   string
		After string
	}
	req := code(`
const fs = require("fs");
let files = 0, err = "";
for (;;) {
  try { fs.closeSync(fs.openSync("/tmp/f" + files, "w")); files++; } catch (e) { err = e.code; break; }
}
fs.rmSync("/tmp/f0");
fs.writeFileSync("/tmp/again", "x");
console.log(JSON.stringify({ files, err, after: fs.readFileSync("/tmp/again", "utf8") }));
`)
	req.Limits = &executorv1.Limits{TmpBytes: 16 << 20, MemoryBytes: 256 << 20}
	r := probe(t, e, req, &got)
	// 4,096 inodes, one of them /tmp itself.
	if got.Err != "ENOSPC" || got.Files != 4095 || got.After != "x" {
		t.Errorf("created %d files, then %q, then read back %q: want 4095, ENOSPC, and a file created after freeing one", got.Files, got.Err, got.After)
	}
	if r.result.GetExitCode() != 0 {
		t.Errorf("result %v, want exit 0", r.result)
	}
}

// TestMaskedPathsAreEmptyAndNodeStillWorks reads each masked path from a
// sandbox (a file is empty, a directory lists nothing) and checks that
// the node APIs that read /proc and /sys still answer, and that ordinary
// work (fs, crypto, worker_threads, a child node, timers) still runs
// under the tightened seccomp profile.
func TestMaskedPathsAreEmptyAndNodeStillWorks(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	var got struct {
		Leaks    map[string]string
		CPUs     int
		Model    string
		Total    float64
		Free     float64
		Load     []float64
		Uptime   float64
		RSS      float64
		Parallel int
		Work     []string
	}
	req := code(`
const fs = require("fs"), os = require("os"), crypto = require("crypto");
const { Worker } = require("worker_threads"), { execFileSync } = require("child_process");
const masked = ` + "`" + strings.Join(maskedForTest, " ") + "`" + `.split(" ");
const leaks = {};
for (const p of masked) {
  let st;
  try { st = fs.statSync(p); } catch (e) { continue; } // absent on this kernel: nothing to read
  try {
    const c = st.isDirectory() ? fs.readdirSync(p).join(",") : fs.readFileSync(p, "utf8");
    if (c.length > 0) leaks[p] = c.slice(0, 80);
  } catch (e) { /* unreadable is fine too */ }
}
const work = [];
fs.writeFileSync("/tmp/w", "abc"); work.push(fs.readFileSync("/tmp/w", "utf8"));
work.push(crypto.createHash("sha256").update("x").digest("hex").slice(0, 8));
work.push(execFileSync(process.execPath, ["-e", "process.stdout.write('child')"]).toString());
new Worker("require('worker_threads').parentPort.postMessage('worker')", { eval: true }).on("message", m => {
  work.push(m);
  setTimeout(() => {
    work.push("timer");
    console.log(JSON.stringify({ leaks, cpus: os.cpus().length, model: os.cpus()[0].model, total: os.totalmem(), free: os.freemem(),
      load: os.loadavg(), uptime: os.uptime(), rss: process.memoryUsage().rss, parallel: os.availableParallelism(), work }));
  }, 10);
});
`)
	probe(t, e, req, &got)
	for p, c := range got.Leaks {
		t.Errorf("%s readable from a sandbox: %q", p, c)
	}
	if got.CPUs < 1 || got.Model == "" || got.Total <= 0 || got.Free <= 0 || len(got.Load) != 3 || got.Uptime <= 0 || got.RSS <= 0 || got.Parallel < 1 {
		t.Errorf("node's view of the machine is broken: %+v", got)
	}
	if strings.Join(got.Work, " ") != "abc 2d711642 child worker timer" {
		t.Errorf("ordinary work: %q, want abc 2d711642 child worker timer", got.Work)
	}
}

// maskedForTest are the paths the executor masks (sandbox.MaskedPaths) and
// containerd's defaults it keeps.
var maskedForTest = []string{
	"/proc/interrupts", "/proc/softirqs", "/proc/pressure", "/proc/schedstat",
	"/proc/locks", "/proc/diskstats", "/proc/vmstat", "/proc/zoneinfo",
	"/proc/buddyinfo", "/proc/pagetypeinfo", "/proc/slabinfo", "/proc/vmallocinfo",
	"/proc/cmdline", "/proc/modules", "/proc/kallsyms", "/proc/key-users",
	"/proc/partitions", "/proc/swaps", "/proc/iomem", "/proc/ioports",
	"/sys/kernel", "/sys/module", "/sys/block", "/sys/class/block", "/sys/devices/virtual/block",
	"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware", "/sys/devices/virtual/powercap",
}
