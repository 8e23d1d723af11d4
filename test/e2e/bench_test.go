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
	"strings"
	"testing"
	"time"
)

// BenchmarkHelloWorld measures a hello-world Execute, end to end through
// gRPC (validation, container and task creation, start, output, exit,
// cleanup), next to bare `node -e ”` on the host, run interleaved in the same
// benchmark so both see the same machine. The sandbox as it ships (tini as
// PID 1, a user namespace of its own) runs beside executors without one or
// both, in the same rounds, so their difference is what the init and the
// user namespace cost per execution. Use -benchtime 40x or more.
func BenchmarkHelloWorld(b *testing.B) {
	variants := []struct {
		name  string
		flags []string
		e     *executor
		runs  []time.Duration
	}{
		{name: "Execute (init, userns)"},
		{name: "  without the init", flags: []string{"--init", ""}},
		{name: "  without the userns", flags: []string{"--userns=false"}},
		{name: "  without either", flags: []string{"--init", "", "--userns=false"}},
	}
	req := code(`console.log("hello")`)
	for i := range variants {
		variants[i].e = startExecutor(b, executorOpts{flags: variants[i].flags})
		// Warm the image and the page cache, as a serving executor would be.
		variants[i].e.mustRun(b, req)
	}
	// The baseline is the image's own node binary, run directly on the host.
	node := imageNode(b)
	var bare []time.Duration
	b.ResetTimer()
	for range b.N {
		for i := range variants {
			t0 := time.Now()
			r := variants[i].e.mustRun(b, req)
			variants[i].runs = append(variants[i].runs, time.Since(t0))
			if string(r.stdout) != "hello\n" {
				b.Fatalf("%s: stdout %q", variants[i].name, r.stdout)
			}
		}
		t0 := time.Now()
		if out, err := exec.Command(node, "-e", "").CombinedOutput(); err != nil {
			b.Fatalf("node -e: %v %s", err, out)
		}
		bare = append(bare, time.Since(t0))
	}
	b.StopTimer()
	sandboxed := variants[0].runs
	sp50, sp95 := percentile(sandboxed, 50), percentile(sandboxed, 95)
	np50, np95 := percentile(bare, 50), percentile(bare, 95)
	b.ReportMetric(ms(sp50), "execute-p50-ms")
	b.ReportMetric(ms(sp95), "execute-p95-ms")
	b.ReportMetric(ms(np50), "bare-node-p50-ms")
	b.ReportMetric(ms(np95), "bare-node-p95-ms")
	b.ReportMetric(ms(sp50)/ms(np50), "ratio-p50")
	b.ReportMetric(ms(sp95)/ms(np95), "ratio-p95")
	neither := percentile(variants[len(variants)-1].runs, 50)
	b.ReportMetric(ms(sp50)-ms(neither), "init+userns-added-p50-ms")
	if b.N >= 30 {
		ver, _ := exec.Command(node, "--version").Output()
		fmt.Printf("\nhello world over %d runs (baseline: the image's node %s run on the host):\n", b.N, strings.TrimSpace(string(ver)))
		for _, v := range variants {
			p50, p95 := percentile(v.runs, 50), percentile(v.runs, 95)
			fmt.Printf("  %-28s p50 %7.1f ms   p95 %7.1f ms   ratio p50 %5.2fx  p95 %5.2fx   p50 vs without either %+6.1f ms\n",
				v.name, ms(p50), ms(p95), ms(p50)/ms(np50), ms(p95)/ms(np95), ms(p50)-ms(neither))
		}
		fmt.Printf("  %-28s p50 %7.1f ms   p95 %7.1f ms\n\n", "bare node -e ''", ms(np50), ms(np95))
	}
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
