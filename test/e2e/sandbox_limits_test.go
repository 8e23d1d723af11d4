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
