package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// probe runs src, which must print one JSON object as its last stdout line,
// and decodes it into out.
func probe(t *testing.T, e *executor, req *executorv1.ExecuteRequest, out any) *run {
	t.Helper()
	r := e.mustRun(t, req)
	lines := strings.Split(strings.TrimSpace(string(r.stdout)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), out); err != nil {
		t.Fatalf("probe output is not JSON: %v\nstdout: %s\nstderr: %s", err, r.stdout, r.stderr)
	}
	return r
}

func TestNoOtherProgramsCanBeSpawned(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	var got map[string]string
	probe(t, e, code(`
const { spawnSync, execSync } = require("child_process");
const out = {};
for (const bin of ["sh", "/bin/sh", "bash", "python3", "perl", "curl", "wget", "nc", "apt-get", "npm", "busybox"]) {
  const r = spawnSync(bin, ["-c", "true"]);
  out[bin] = r.error ? r.error.code : "ran:" + r.status;
}
try { execSync("true"); out.execSync = "ran"; } catch (e) { out.execSync = e.code; }
console.log(JSON.stringify(out));
`), &got)
	for bin, res := range got {
		if res != "ENOENT" {
			t.Errorf("spawning %s: got %s, want ENOENT", bin, res)
		}
	}
	if len(got) != 12 {
		t.Errorf("probe reported %d programs, want 12: %v", len(got), got)
	}
}

func TestProcessIsUnprivileged(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	var got map[string]string
	probe(t, e, code(`
const fs = require("fs");
const st = Object.fromEntries(fs.readFileSync("/proc/self/status", "utf8").trim().split("\n").map(l => l.split(/:\s+/)));
console.log(JSON.stringify({Uid: st.Uid, Gid: st.Gid, CapInh: st.CapInh, CapPrm: st.CapPrm, CapEff: st.CapEff, CapBnd: st.CapBnd, CapAmb: st.CapAmb,
  NoNewPrivs: st.NoNewPrivs, Seccomp: st.Seccomp, Groups: st.Groups || ""}));
`), &got)
	want := map[string]string{
		"Uid": "65532\t65532\t65532\t65532", "Gid": "65532\t65532\t65532\t65532",
		"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
		"CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
		"NoNewPrivs": "1", "Seccomp": "2",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("/proc/self/status %s = %q, want %q", k, got[k], w)
		}
	}
	for _, g := range strings.Fields(got["Groups"]) {
		if g != "65532" {
			t.Errorf("supplementary group %s, want none but 65532", g)
		}
	}
}

func TestFilesystemIsReadOnlyButTmp(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	var got map[string]string
	probe(t, e, code(`
const fs = require("fs");
const out = {};
for (const p of ["/x", "/etc/x", "/usr/local/bin/x", "/sandbox/x", "/sandbox/main.js", "/home/sandbox/x", "/dev/shm/x", "/dev/x", "/run/x", "/proc/sys/kernel/hostname", "/sys/x", "/tmp/x"]) {
  try { fs.writeFileSync(p, "x"); out[p] = "written"; } catch (e) { out[p] = e.code; }
}
console.log(JSON.stringify(out));
`), &got)
	for p, res := range got {
		if p == "/tmp/x" {
			if res != "written" {
				t.Errorf("write %s: %s, want written", p, res)
			}
			continue
		}
		if res == "written" {
			t.Errorf("write %s succeeded; only /tmp may be writable", p)
		}
	}
	if len(got) != 12 {
		t.Errorf("probe reported %d paths, want 12", len(got))
	}
}

func TestTmpIsSizeCappedNoexecNosuid(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	req := code(`
const fs = require("fs");
const out = {};
const mounts = fs.readFileSync("/proc/self/mounts", "utf8").split("\n").filter(l => l.split(" ")[1] === "/tmp");
out.mount = mounts.join(";");
const chunk = Buffer.alloc(256 * 1024, 1);
let written = 0;
try { const fd = fs.openSync("/tmp/big", "w"); for (;;) { fs.writeSync(fd, chunk); written += chunk.length; } } catch (e) { out.err = e.code; }
out.written = written;
console.log(JSON.stringify(out));
`)
	req.Limits = &executorv1.Limits{TmpBytes: 4 << 20, MemoryBytes: 512 << 20}
	var got struct {
		Mount   string
		Err     string
		Written int
	}
	probe(t, e, req, &got)
	if got.Err != "ENOSPC" || got.Written > 4<<20 || got.Written < 3<<20 {
		t.Errorf("filling /tmp: error %q after %d bytes, want ENOSPC at about 4 MiB", got.Err, got.Written)
	}
	for _, opt := range []string{"nosuid", "nodev", "noexec", "size=4096k"} {
		if !strings.Contains(got.Mount, opt) {
			t.Errorf("/tmp mount %q lacks %s", got.Mount, opt)
		}
	}
}

func TestTmpRefusesToExecute(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	// A copy of node is the only executable at hand; /tmp must hold it.
	req := code(`
const fs = require("fs");
fs.copyFileSync(process.execPath, "/tmp/node2");
fs.chmodSync("/tmp/node2", 0o755);
const r = require("child_process").spawnSync("/tmp/node2", ["-e", "1"]);
console.log(JSON.stringify({exec: r.error ? r.error.code : "ran"}));
`)
	req.Limits = &executorv1.Limits{TmpBytes: 256 << 20, MemoryBytes: 1024 << 20}
	var got struct{ Exec string }
	probe(t, e, req, &got)
	if got.Exec != "EACCES" {
		t.Errorf("executing a file in /tmp: %q, want EACCES", got.Exec)
	}
}

func TestOnlyLoopbackNetwork(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	// A listener on the host's loopback: the sandbox's own loopback is a
	// different one, so the connection must be refused and nothing arrive.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := lis.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	port := lis.Addr().(*net.TCPAddr).Port

	var got struct {
		Ifaces []string
		Conn   string
	}
	probe(t, e, code(fmt.Sprintf(`
const fs = require("fs");
const ifaces = fs.readFileSync("/proc/net/dev", "utf8").split("\n").slice(2).filter(Boolean).map(l => l.split(":")[0].trim());
const s = require("net").connect(%d, "127.0.0.1");
s.on("connect", () => { console.log(JSON.stringify({ifaces, conn: "connected"})); s.destroy(); });
s.on("error", e => console.log(JSON.stringify({ifaces, conn: e.code})));
`, port)), &got)
	if len(got.Ifaces) != 1 || got.Ifaces[0] != "lo" {
		t.Errorf("interfaces %v, want only lo", got.Ifaces)
	}
	if got.Conn != "ECONNREFUSED" {
		t.Errorf("connect to the host's loopback port: %s, want ECONNREFUSED", got.Conn)
	}
	select {
	case <-accepted:
		t.Error("the host listener accepted a connection from the sandbox")
	case <-time.After(100 * time.Millisecond):
	}
}

func TestNoDescriptorPointsOutside(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	var got map[string]string
	probe(t, e, code(`
const fs = require("fs");
const out = {};
for (const fd of fs.readdirSync("/proc/self/fd")) {
  try { out[fd] = fs.readlinkSync("/proc/self/fd/" + fd); } catch (e) { out[fd] = "gone:" + e.code; }
}
console.log(JSON.stringify(out));
`), &got)
	if len(got) < 3 {
		t.Fatalf("only %d descriptors listed: %v", len(got), got)
	}
	allowed := []string{"pipe:[", "socket:[", "anon_inode:", "/dev/null", "/sandbox/", "/proc/", "gone:"}
	for fd, target := range got {
		ok := false
		for _, a := range allowed {
			ok = ok || strings.HasPrefix(target, a)
		}
		if !ok {
			t.Errorf("fd %s points at %q, outside what the sandbox owns", fd, target)
		}
	}
}

func TestProcIsMasked(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	var got map[string]string
	probe(t, e, code(`
const fs = require("fs");
const out = {};
for (const p of ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware"]) {
  try { const st = fs.statSync(p); out[p] = st.isDirectory() ? "dir:" + fs.readdirSync(p).length : "size:" + fs.readFileSync(p).length; }
  catch (e) { out[p] = e.code; }
}
try { fs.writeFileSync("/proc/sysrq-trigger", "h"); out.sysrq = "written"; } catch (e) { out.sysrq = e.code; }
out.cgroup = fs.readFileSync("/proc/self/cgroup", "utf8").trim().split("\n").map(l => l.split(":")[2]).filter(p => p !== "/").join(",");
console.log(JSON.stringify(out));
`), &got)
	for _, p := range []string{"/proc/kcore", "/proc/keys", "/proc/timer_list"} {
		if got[p] != "size:0" && got[p] != "ENOENT" {
			t.Errorf("%s: %s, want masked (empty)", p, got[p])
		}
	}
	if got["/sys/firmware"] != "dir:0" && got["/sys/firmware"] != "ENOENT" {
		t.Errorf("/sys/firmware: %s, want masked", got["/sys/firmware"])
	}
	if got["sysrq"] == "written" {
		t.Error("/proc/sysrq-trigger was writable")
	}
	if got["cgroup"] != "" {
		t.Errorf("the sandbox sees host cgroup paths %q; want its own cgroup namespace", got["cgroup"])
	}
}

func TestOpenFilesLimit(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	req := code(`
const fs = require("fs");
const fds = [];
let err = "";
try { for (let i = 0; i < 10000; i++) fds.push(fs.openSync("/sandbox/main.js", "r")); } catch (e) { err = e.code; }
console.log(JSON.stringify({opened: fds.length, err}));
`)
	req.Limits = &executorv1.Limits{OpenFiles: 100}
	var got struct {
		Opened int
		Err    string
	}
	probe(t, e, req, &got)
	if got.Err != "EMFILE" || got.Opened >= 100 || got.Opened < 50 {
		t.Errorf("opened %d then %q; want EMFILE before 100 descriptors", got.Opened, got.Err)
	}
}

// TestOnlyIntendedMounts lists the sandbox's mounts: the read-only root, the
// kernel filesystems, /tmp and the code, and no host path besides the code.
func TestOnlyIntendedMounts(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	var got []string
	probe(t, e, code(`
const fs = require("fs");
console.log(JSON.stringify(fs.readFileSync("/proc/self/mountinfo", "utf8").trim().split("\n").map(l => l.split(" ")[4])));
`), &got)
	allowed := map[string]bool{"/": true, "/proc": true, "/dev": true, "/sys": true, "/tmp": true, "/sandbox": true}
	for _, m := range got {
		switch {
		case allowed[m]:
		// masked and read-only /proc and /sys paths are bind mounts over
		// themselves or /dev/null; /dev entries are the default devices.
		case strings.HasPrefix(m, "/proc/"), strings.HasPrefix(m, "/sys/"), strings.HasPrefix(m, "/dev/"):
		default:
			t.Errorf("unexpected mount %s", m)
		}
	}
	for _, m := range []string{"/", "/tmp", "/sandbox"} {
		if !slices.Contains(got, m) {
			t.Errorf("mount %s missing from %v", m, got)
		}
	}
	for _, m := range []string{"/dev/shm", "/run", "/dev/mqueue"} {
		if slices.Contains(got, m) {
			t.Errorf("writable default mount %s present", m)
		}
	}
}
