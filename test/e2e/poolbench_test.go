package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// timing is when one Execute's events arrived, counted from the request's
// send.
type timing struct {
	started, firstByte, result time.Duration
}

// timedExecute runs req on e and times its Started event, its first stdout
// byte and its Result. It returns an error unless the stream ends with a
// Result, after printing want on stdout with exit code 0.
func (e *executor) timedExecute(req *executorv1.ExecuteRequest, want string) (timing, *executorv1.Started, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var tm timing
	var started *executorv1.Started
	var result *executorv1.Result
	var stdout bytes.Buffer
	t0 := time.Now()
	stream, err := e.client.Execute(ctx, req)
	if err != nil {
		return tm, nil, fmt.Errorf("Execute: %w", err)
	}
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return tm, started, fmt.Errorf("Execute stream: %w (stdout %q)", err, stdout.String())
		}
		since := time.Since(t0)
		if s := ev.GetStarted(); s != nil {
			tm.started, started = since, s
		}
		if d := ev.GetStdout().GetData(); len(d) > 0 {
			if stdout.Len() == 0 {
				tm.firstByte = since
			}
			stdout.Write(d)
		}
		if r := ev.GetResult(); r != nil {
			tm.result, result = since, r
		}
	}
	switch {
	case result == nil:
		return tm, started, fmt.Errorf("stream ended without a Result (stdout %q)", stdout.String())
	case stdout.String() != want || result.GetExitCode() != 0:
		return tm, started, fmt.Errorf("stdout %q, exit code %d; want %q, 0", stdout.String(), result.GetExitCode(), want)
	}
	return tm, started, nil
}

// parallelRound sends n copies of req to e at once and returns each one's
// time to its Result and how many ran in a warm sandbox; any execution
// without a Result fails b.
func (e *executor) parallelRound(b *testing.B, req *executorv1.ExecuteRequest, want string, n int) ([]time.Duration, int) {
	b.Helper()
	times := make([]time.Duration, n)
	starts := make([]*executorv1.Started, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var tm timing
			tm, starts[i], errs[i] = e.timedExecute(req, want)
			times[i] = tm.result
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatalf("%d at once: %v", n, err)
	}
	warm := 0
	for _, s := range starts {
		if s.GetWarm() {
			warm++
		}
	}
	return times, warm
}

// scrapeMetrics reads an executor's /metrics into a map from each series
// (name and labels, as printed) to its value.
func scrapeMetrics(t testing.TB, e *executor) map[string]float64 {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	res, err := client.Get("http://" + e.app.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	series := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			series[line[:i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return series
}

// settle waits, untimed, until e is idle: pool ready sandboxes waiting
// (none booting) and no teardown in flight, so that a measurement neither
// finds the pool short nor shares the CPU with background work.
func (e *executor) settle(b *testing.B, pool int) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		m := scrapeMetrics(b, e)
		ready, booting := m[`sandpit_warm_sandboxes{state="ready"}`], m[`sandpit_warm_sandboxes{state="booting"}`]
		inFlight := m["sandpit_sandbox_teardowns_in_flight"]
		if ready == float64(pool) && booting == 0 && inFlight == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("the executor did not settle within a minute: %v ready of %d, %v booting, %v teardowns in flight", ready, pool, booting, inFlight)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// warmLabelFilter finds the pooled containers in containerd.
const warmLabelFilter = `labels."run.sandpit.warm"==true`

// sandboxMemory is what one ready warm sandbox holds on the host: its
// cgroup's memory (tini and the waiting node; anon is the part that is not
// page cache) and the proportional set size of its containerd shim.
type sandboxMemory struct {
	cgroup, anon, shimPSS uint64
}

// warmSandboxMemory measures every ready warm sandbox in the tests'
// containerd namespace.
func warmSandboxMemory(b *testing.B) []sandboxMemory {
	b.Helper()
	ctx := containerdtest.WithNamespace(context.Background())
	c, err := env.Client()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	cs, err := c.Containers(ctx, warmLabelFilter)
	if err != nil {
		b.Fatal(err)
	}
	var out []sandboxMemory
	for _, ct := range cs {
		task, err := ct.Task(ctx, nil)
		if err != nil {
			b.Fatalf("warm sandbox %s: task: %v", ct.ID(), err)
		}
		cur, anon := cgroupMemory(b, filepath.Join(containerdtest.Namespace, ct.ID()))
		out = append(out, sandboxMemory{cgroup: cur, anon: anon, shimPSS: shimPSS(b, int(task.Pid()))})
	}
	return out
}

// cgroupMemory reads the memory charged to the cgroup at path (the spec's
// cgroupsPath, relative) and its anonymous part, from the v1 memory
// hierarchy where it is mounted, else from the unified one.
func cgroupMemory(b *testing.B, path string) (current, anon uint64) {
	b.Helper()
	if dir := filepath.Join("/sys/fs/cgroup/memory", path); dirExists(dir) {
		return fileValue(b, filepath.Join(dir, "memory.usage_in_bytes"), ""), fileValue(b, filepath.Join(dir, "memory.stat"), "total_rss")
	}
	dir := filepath.Join("/sys/fs/cgroup", path)
	return fileValue(b, filepath.Join(dir, "memory.current"), ""), fileValue(b, filepath.Join(dir, "memory.stat"), "anon")
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// fileValue reads a number from a cgroup or proc file: the whole file when
// key is empty, else the first field after key on the line that starts
// with it ("total_rss 123", "Pss:   456 kB").
func fileValue(b *testing.B, file, key string) uint64 {
	b.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	s := strings.TrimSpace(string(data))
	if key != "" {
		var rest string
		for line := range strings.SplitSeq(s, "\n") {
			if r, ok := strings.CutPrefix(line, key+" "); ok {
				rest = r
				break
			}
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			b.Fatalf("%s has no %s", file, key)
		}
		s = f[0]
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		b.Fatalf("%s: %v", file, err)
	}
	return v
}

// shimPSS is the proportional set size, in bytes, of the containerd shim
// that is the parent of the task whose init is pid.
func shimPSS(b *testing.B, pid int) uint64 {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name (in parentheses, may hold spaces):
	// state, then the parent's pid.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	shim, err := strconv.Atoi(f[1])
	if err != nil {
		b.Fatalf("/proc/%d/stat: %v", pid, err)
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", shim)); !strings.HasPrefix(string(comm), "containerd-shim") {
		b.Fatalf("the parent of the sandbox's init (pid %d) is %q, not a containerd shim", shim, strings.TrimSpace(string(comm)))
	}
	kb := fileValue(b, fmt.Sprintf("/proc/%d/smaps_rollup", shim), "Pss:")
	return kb << 10
}

// inProcessMemory is this process's live Go heap and its goroutines'
// stacks: the in-process executors' memory. Live bytes rather than heap
// spans in use, which move by a few hundred KiB with fragmentation alone;
// after two collections, as the first leaves up to 2 MiB here that only
// the second frees (what finalizers released), where a third frees
// nothing more.
func inProcessMemory() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc + m.StackInuse)
}

func mib[T int64 | uint64](n T) float64 { return float64(n) / (1 << 20) }
