package e2e

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkHelloWorld measures a hello-world Execute, end to end through
// gRPC, next to bare `node -e ”` on the host, run interleaved in the same
// benchmark so both see the same machine: on an executor with a warm pool
// of two (the default), where every timed run must find a sandbox booted
// ahead of time, and on one without a pool (--warm-pool 0), where every run
// creates its own. For both it times the Started event, the first stdout
// byte and the Result, each counted from the request's send. Before every
// timed run (and the bare node) it waits, untimed, until each executor is
// idle: its pool full again and no teardown in flight. The cold sandbox as
// it ships (tini as PID 1, a user namespace of its own) runs beside cold
// executors without one or both, so their difference is what the init and
// the user namespace cost per execution. Then rounds of 20 executions at
// once on the warm pool's executor (at the default 8 concurrent, 16
// queued), and what each ready warm sandbox holds on the host. Use
// -benchtime 40x or more.
func BenchmarkHelloWorld(b *testing.B) {
	const pool, parallel, rounds = 2, 20, 5
	type row struct {
		name  string
		pool  int
		flags []string
		e     *executor
		runs  []timing
	}
	// The warm pool's executor starts last: an executor starting up sweeps
	// the namespace of the sandboxes it does not own, a pool's too.
	rows := []*row{
		{name: "  without the init", flags: []string{"--init", ""}},
		{name: "  without the userns", flags: []string{"--userns=false"}},
		{name: "  without either", flags: []string{"--init", "", "--userns=false"}},
		{name: "cold (init, userns)"},
		{name: fmt.Sprintf("warm (pool of %d)", pool), pool: pool},
	}
	variants, cold, warm := rows[:3], rows[3], rows[4]
	req := code(`console.log("hello")`)
	const want = "hello\n"
	// The executor's own memory is this process's (it runs in-process):
	// what starting one without a pool adds, then one with a full pool.
	var before, withCold, withWarm int64
	for _, r := range rows {
		if r == cold {
			before = inProcessMemory()
		}
		flags := append([]string{"--metrics-listen", "127.0.0.1:0", "--warm-pool", strconv.Itoa(r.pool)}, r.flags...)
		r.e = startExecutor(b, executorOpts{slots: 8, queue: 16, flags: flags})
		// Warm the image and the page cache, as a serving executor would be.
		r.e.mustRun(b, req)
		r.e.settle(b, r.pool)
		switch r {
		case cold:
			withCold = inProcessMemory()
		case warm:
			withWarm = inProcessMemory()
		}
	}
	settle := func() {
		for _, r := range rows {
			r.e.settle(b, r.pool)
		}
	}
	// The baseline is the image's own node binary, run directly on the host.
	node := imageNode(b)
	var bare []time.Duration
	b.ResetTimer()
	for range b.N {
		for _, r := range rows {
			settle()
			tm, started, err := r.e.timedExecute(req, want)
			if err != nil {
				b.Fatalf("%s: %v", r.name, err)
			}
			if started.GetWarm() != (r.pool > 0) {
				b.Fatalf("%s: Started.warm is %v", r.name, started.GetWarm())
			}
			r.runs = append(r.runs, tm)
		}
		settle()
		t0 := time.Now()
		if out, err := exec.Command(node, "-e", "").CombinedOutput(); err != nil {
			b.Fatalf("node -e: %v %s", err, out)
		}
		bare = append(bare, time.Since(t0))
	}
	b.StopTimer()

	var together []time.Duration
	warmTogether := 0
	for range min(rounds, b.N) {
		settle()
		times, n := warm.e.parallelRound(b, req, want, parallel)
		together = append(together, times...)
		warmTogether += n
	}
	settle()
	sandboxes := warmSandboxMemory(b)
	if len(sandboxes) != pool {
		b.Fatalf("%d ready warm sandboxes in containerd, want %d", len(sandboxes), pool)
	}
	var cgroup, anon, shim uint64
	for _, s := range sandboxes {
		cgroup, anon, shim = cgroup+s.cgroup, anon+s.anon, shim+s.shimPSS
	}
	poolGrowth := (withWarm - withCold) - (withCold - before)

	results := func(r *row) []time.Duration { return pick(r.runs, func(t timing) time.Duration { return t.result }) }
	np50, np95 := percentile(bare, 50), percentile(bare, 95)
	ratio := func(ds []time.Duration, p int, base time.Duration) float64 { return ms(percentile(ds, p)) / ms(base) }
	neither := percentile(results(variants[2]), 50)
	b.ReportMetric(ratio(results(warm), 50, np50), "warm-p50-ratio")
	b.ReportMetric(ratio(results(warm), 95, np95), "warm-p95-ratio")
	b.ReportMetric(ratio(results(cold), 50, np50), "cold-p50-ratio")
	b.ReportMetric(ratio(results(cold), 95, np95), "cold-p95-ratio")
	b.ReportMetric(ratio(together, 99, percentile(together, 50)), "parallel-p99-over-p50")
	b.ReportMetric(ms(percentile(results(warm), 50)), "warm-p50-ms")
	b.ReportMetric(ms(percentile(results(cold), 50)), "cold-p50-ms")
	b.ReportMetric(ms(np50), "bare-node-p50-ms")
	b.ReportMetric(ms(percentile(results(cold), 50))-ms(neither), "init+userns-added-p50-ms")
	b.ReportMetric(mib(cgroup+shim)/pool, "warm-sandbox-MiB")
	b.ReportMetric(mib(poolGrowth)/pool, "executor-per-warm-sandbox-MiB")
	if b.N < 30 {
		return
	}
	ver, _ := exec.Command(node, "--version").Output()
	fmt.Printf("\nhello world over %d runs each, from the request's send (baseline: the image's node %s run on the host, same rounds):\n", b.N, strings.TrimSpace(string(ver)))
	fmt.Printf("  %-22s %-10s %8s %8s %8s   %9s %9s\n", "", "until", "p50 ms", "p95 ms", "p99 ms", "p50/bare", "p95/bare")
	line := func(name, until string, ds []time.Duration, extra string) {
		fmt.Printf("  %-22s %-10s %8.1f %8.1f %8.1f   %8.2fx %8.2fx%s\n", name, until, ms(percentile(ds, 50)), ms(percentile(ds, 95)), ms(percentile(ds, 99)),
			ratio(ds, 50, np50), ratio(ds, 95, np95), extra)
	}
	for _, r := range []*row{warm, cold} {
		line(r.name, "Started", pick(r.runs, func(t timing) time.Duration { return t.started }), "")
		line("", "1st byte", pick(r.runs, func(t timing) time.Duration { return t.firstByte }), "")
		line("", "Result", results(r), "")
	}
	for _, r := range variants {
		line(r.name, "Result", results(r), fmt.Sprintf("   p50 vs without either %+6.1f ms", ms(percentile(results(r), 50))-ms(neither)))
	}
	line(fmt.Sprintf("%d at once x%d, pooled", parallel, len(together)/parallel), "Result", together,
		fmt.Sprintf("   p99/p50 %.2fx, %d of %d warm", ratio(together, 99, percentile(together, 50)), warmTogether, len(together)))
	fmt.Printf("  %-22s %-10s %8.1f %8.1f %8.1f\n", "bare node -e ''", "exit", ms(np50), ms(np95), ms(percentile(bare, 99)))
	fmt.Printf("memory of a ready warm sandbox on the host: cgroup %.1f MiB (anon %.1f), shim PSS %.1f MiB, executor %+.1f MiB; the pool of %d: %.1f MiB with the executor's growth\n\n",
		mib(cgroup)/pool, mib(anon)/pool, mib(shim)/pool, mib(poolGrowth)/pool, pool, mib(cgroup+shim)+mib(poolGrowth))
}

// pick is one field of every timing.
func pick(ts []timing, f func(timing) time.Duration) []time.Duration {
	ds := make([]time.Duration, len(ts))
	for i, t := range ts {
		ds[i] = f(t)
	}
	return ds
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	return s[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// imageNode extracts usr/local/bin/node from the image archive's layers.
func imageNode(b *testing.B) string {
	b.Helper()
	f, err := os.Open(env.ImageTar)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	outer := tar.NewReader(f)
	for {
		h, err := outer.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		if !strings.HasPrefix(h.Name, "blobs/") {
			continue
		}
		zr, err := gzip.NewReader(outer)
		if err != nil {
			continue // not a layer
		}
		inner := tar.NewReader(zr)
		for {
			ih, err := inner.Next()
			if err != nil {
				break
			}
			if strings.TrimPrefix(ih.Name, "./") != "usr/local/bin/node" {
				continue
			}
			p := filepath.Join(b.TempDir(), "node")
			out, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o755)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(out, inner); err != nil {
				b.Fatal(err)
			}
			if err := out.Close(); err != nil {
				b.Fatal(err)
			}
			return p
		}
	}
	b.Fatalf("no usr/local/bin/node in %s", env.ImageTar)
	return ""
}
