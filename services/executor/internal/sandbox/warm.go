package sandbox

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
)

// A warm sandbox is booted ahead of time, for one execution: container,
// task, cgroup and network made, node started with the flags and the
// environment it reads at start-up, waiting on stdin for the program's
// arguments and environment (warm_wait.mjs, imported last), at the least
// CPU weight, so that booting takes only what executions leave. Its claim
// writes the program's files into its code directory, which the sandbox
// sees read-only, applies the request's memory, CPU and pids limits and the
// default CPU weight to its cgroup and sends node the rest; node then loads the entrypoint as its
// main module. Everything that differs between programs of one pool is
// applied at the claim; what cannot be (node's options, the variables node
// reads only at start-up, /tmp's size, the open-files limit) is the pool's,
// and a request that differs runs cold.

//go:embed warm_wait.mjs
var warmWait []byte

// warmWaitFlag imports warm_wait.mjs; like the egress module it is a data:
// URL, so it needs no file in the sandbox.
var warmWaitFlag = "--import=data:text/javascript;base64," + base64.StdEncoding.EncodeToString(warmWait)

// readyMark is what warm_wait.mjs writes on stdout once node waits.
var readyMark = []byte("\x00sandpit-ready\n")

// LabelWarm marks a container booted for the warm pool.
const LabelWarm = "run.sandpit.warm"

// bootTimeout bounds a warm sandbox's boot, up to node waiting.
const bootTimeout = 30 * time.Second

// ErrWarmGone is returned by RunWarm when the warm sandbox ended before
// its claim; nothing of the program ran.
var ErrWarmGone = errors.New("warm sandbox ended before its claim")

// Warm is a sandbox booted ahead of time; see Boot.
type Warm struct {
	// ID is the sandbox's id, the execution id of the one execution
	// that claims it.
	ID string
	// Born is when its boot began.
	Born time.Time

	b              *box
	r              *Runtime
	stdin          *io.PipeReader
	feed           *io.PipeWriter
	stdout, stderr *claimWriter
	released       func()
	claimed        sync.Once
}

// Boot makes a warm sandbox of spec (its Files, Args, Stdin and output are
// ignored: those come at the claim) and returns once node waits for its
// program. spec.Released is called once the sandbox is gone if it is
// discarded; a claim takes over with its own. Sandboxes under runsc cannot
// be booted ahead.
func (r *Runtime) Boot(ctx context.Context, id string, spec Spec) (*Warm, error) {
	if spec.Runtime != "" && spec.Runtime != "runc" {
		return nil, fmt.Errorf("boot warm sandbox: runtime %s has no warm sandboxes", spec.Runtime)
	}
	ctx = r.ns(ctx)
	spec.NodeFlags = append(slices.Clone(spec.NodeFlags), warmWaitFlag)
	spec.SandpitLabels = map[string]string{LabelWarm: "true"}
	spec.Idle = true
	spec.Files, spec.Args, spec.Stdin, spec.Labels = nil, nil, nil, nil
	pr, pw := io.Pipe()
	w := &Warm{ID: id, Born: time.Now(), r: r, stdin: pr, feed: pw, released: spec.Released,
		stdout: &claimWriter{ready: make(chan struct{})}, stderr: &claimWriter{}}
	sent := make(chan struct{})
	b, err := r.create(ctx, id, spec, &closeOnEOF{r: pr, eof: sent}, w.stdout, w.stderr)
	if err != nil {
		if spec.Released != nil {
			spec.Released()
		}
		return nil, err
	}
	b.stdinSent = sent
	w.b = b
	if err := b.task.Start(context.WithoutCancel(ctx)); err != nil {
		w.Discard()
		return nil, fmt.Errorf("start warm sandbox: %w%s", err, r.createHint(err, b.hostID))
	}
	t := time.NewTimer(bootTimeout)
	defer t.Stop()
	select {
	case <-w.stdout.ready:
		return w, nil
	case <-b.exited:
		err = fmt.Errorf("boot warm sandbox: node exited with status %d before it waited: %q", b.status.ExitCode(), w.stderr.early())
	case <-t.C:
		err = fmt.Errorf("boot warm sandbox: node did not wait within %s", bootTimeout)
	case <-ctx.Done():
		err = fmt.Errorf("boot warm sandbox: %w", ctx.Err())
	}
	w.Discard()
	return nil, err
}

// Alive reports whether the warm sandbox's node still waits.
func (w *Warm) Alive() bool {
	select {
	case <-w.b.exited:
		return false
	default:
		return true
	}
}

// Discard removes an unclaimed warm sandbox in the background; calls after
// a claim, or after the first, do nothing.
func (w *Warm) Discard() {
	w.claimed.Do(func() {
		_ = w.stdin.Close()
		w.r.dispose(w.b, w.released)
	})
}

// RunWarm runs spec in the warm sandbox w, as Run runs it in a new one
// (spec's image, entrypoint, node flags, start-up environment, /tmp size,
// open-files limit and network must be w's). Its wall time, CPU time and
// peak memory count the program only.
func (r *Runtime) RunWarm(ctx context.Context, w *Warm, spec Spec, started func()) (out Outcome, err error) {
	ctx = r.ns(ctx)
	claimed := false
	w.claimed.Do(func() { claimed = true })
	if !claimed {
		if spec.Released != nil {
			spec.Released()
		}
		return out, ErrWarmGone
	}
	b := w.b
	defer r.lostContainerd(ctx, &err)
	defer r.dispose(b, spec.Released)
	defer w.stdin.Close()
	if !w.Alive() {
		return out, ErrWarmGone
	}
	hdr, err := warmHeader(spec)
	if err != nil {
		return out, err
	}
	if err := writeCode(b.codeDir, spec.Files); err != nil {
		return out, err
	}
	base, err := claimCgroup(b.cgroupPath, spec.Limits)
	if base.peak != nil {
		defer base.peak.Close()
	}
	if err != nil {
		return out, err
	}
	w.stdout.claim(spec.Stdout)
	w.stderr.claim(spec.Stderr)
	started()
	begin := time.Now()
	go func() {
		// Fails only once the sandbox is gone, which closes stdin.
		if _, err := w.feed.Write(append(hdr, spec.Stdin...)); err == nil {
			_ = w.feed.Close()
		}
	}()
	return b.wait(ctx, spec.Limits.Timeout, begin, base)
}

// warmHeader is what warm_wait.mjs reads: its length, then the arguments
// and the complete environment, in order.
func warmHeader(spec Spec) ([]byte, error) {
	env := make([][2]string, 0, len(spec.Env))
	for _, kv := range spec.Env {
		k, v, _ := strings.Cut(kv, "=")
		env = append(env, [2]string{k, v})
	}
	args := spec.Args
	if args == nil {
		args = []string{}
	}
	j, err := json.Marshal(struct {
		Argv []string    `json:"argv"`
		Env  [][2]string `json:"env"`
	}{args, env})
	if err != nil {
		return nil, fmt.Errorf("warm sandbox header: %w", err)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(j))), j...), nil
}

// claimCgroup applies l's memory, CPU and pids limits to the sandbox's
// cgroup at path (the spec's cgroupsPath) and takes the baseline of what
// the boot used: CPU time and OOM kills so far, and the memory peak reset
// (on v2 to be read through the returned file).
func claimCgroup(path string, l limits.Set) (baseline, error) {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "memory", path)); err == nil {
		return claimCgroupV1(path, l)
	}
	return claimCgroupV2(filepath.Join(cgroupRoot, path), l)
}

func claimCgroupV2(dir string, l limits.Set) (baseline, error) {
	var base baseline
	if err := writeCgroup(
		[2]string{filepath.Join(dir, "memory.max"), strconv.FormatUint(l.MemoryBytes, 10)},
		[2]string{filepath.Join(dir, "cpu.max"), fmt.Sprintf("%d %d", cpuQuota(l), cpuPeriod)},
		[2]string{filepath.Join(dir, "pids.max"), strconv.FormatUint(uint64(l.Pids), 10)},
		[2]string{filepath.Join(dir, "cpu.weight"), "100"},
	); err != nil {
		return base, err
	}
	peak, err := os.OpenFile(filepath.Join(dir, "memory.peak"), os.O_RDWR, 0)
	if err != nil {
		return base, fmt.Errorf("claim warm sandbox: %w", err)
	}
	base.peak = peak
	if _, err := peak.Write([]byte("reset\n")); err != nil {
		return base, fmt.Errorf("claim warm sandbox: reset memory.peak: %w", err)
	}
	usec, err := readKeyed(filepath.Join(dir, "cpu.stat"), "usage_usec")
	if err != nil {
		return base, err
	}
	base.cpu = time.Duration(usec) * time.Microsecond
	base.oom, err = readKeyed(filepath.Join(dir, "memory.events"), "oom_kill")
	return base, err
}

func claimCgroupV1(path string, l limits.Set) (baseline, error) {
	var base baseline
	mem := filepath.Join(cgroupRoot, "memory", path)
	limit := [2]string{filepath.Join(mem, "memory.limit_in_bytes"), strconv.FormatUint(l.MemoryBytes, 10)}
	memsw := [2]string{filepath.Join(mem, "memory.memsw.limit_in_bytes"), strconv.FormatUint(l.MemoryBytes, 10)}
	// memory+swap may never be below memory: lowered, memory goes first;
	// raised, memory+swap does.
	order := [][2]string{limit, memsw}
	if cur, err := readUint(limit[0]); err == nil && l.MemoryBytes > cur {
		order = [][2]string{memsw, limit}
	}
	if _, err := os.Stat(memsw[0]); err != nil {
		order = [][2]string{limit}
	}
	if err := writeCgroup(append(order,
		[2]string{filepath.Join(cgroupRoot, "cpu", path, "cpu.cfs_period_us"), strconv.Itoa(cpuPeriod)},
		[2]string{filepath.Join(cgroupRoot, "cpu", path, "cpu.cfs_quota_us"), strconv.FormatInt(cpuQuota(l), 10)},
		[2]string{filepath.Join(cgroupRoot, "cpu", path, "cpu.shares"), strconv.Itoa(defaultCPUShares)},
		[2]string{filepath.Join(cgroupRoot, "pids", path, "pids.max"), strconv.FormatUint(uint64(l.Pids), 10)},
		// Writing 0 resets the peak to the current usage.
		[2]string{filepath.Join(mem, "memory.max_usage_in_bytes"), "0"},
	)...); err != nil {
		return base, err
	}
	ns, err := readUint(filepath.Join(cgroupRoot, "cpuacct", path, "cpuacct.usage"))
	if err != nil {
		return base, err
	}
	base.cpu = time.Duration(ns)
	base.oom, err = readKeyed(filepath.Join(mem, "memory.oom_control"), "oom_kill")
	return base, err
}

// cpuQuota is l's CFS quota per cpuPeriod.
func cpuQuota(l limits.Set) int64 { return int64(l.CPUMillicores) * cpuPeriod / 1000 }

// writeCgroup writes each (file, value) in order.
func writeCgroup(writes ...[2]string) error {
	for _, w := range writes {
		if err := os.WriteFile(w[0], []byte(w[1]), 0); err != nil {
			return fmt.Errorf("claim warm sandbox: set %s: %w", filepath.Base(w[0]), err)
		}
	}
	return nil
}

// claimWriter is a warm sandbox's stdout or stderr: before the claim it
// watches for node's ready mark (stdout) and keeps the start of anything
// else, for a boot error; after it, it writes to the execution's writer.
type claimWriter struct {
	mu    sync.Mutex
	w     io.Writer
	pre   []byte
	ready chan struct{}
}

// maxEarlyOutput bounds what is kept of the output before a claim.
const maxEarlyOutput = 4096

func (c *claimWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	w := c.w
	if w == nil {
		c.pre = append(c.pre, p[:min(len(p), maxEarlyOutput-len(c.pre))]...)
		if c.ready != nil && bytes.Contains(c.pre, readyMark) {
			select {
			case <-c.ready:
			default:
				close(c.ready)
			}
		}
	}
	c.mu.Unlock()
	if w == nil {
		return len(p), nil
	}
	return w.Write(p)
}

func (c *claimWriter) claim(w io.Writer) {
	c.mu.Lock()
	c.w = w
	c.mu.Unlock()
}

func (c *claimWriter) early() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.pre)
}
