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
// benchmark so both see the same machine. Use -benchtime 40x or more.
func BenchmarkHelloWorld(b *testing.B) {
	e := startExecutor(b, executorOpts{})
	// The baseline is the image's own node binary, run directly on the host.
	node := imageNode(b)
	req := code(`console.log("hello")`)
	// Warm the image and the page cache, as a serving executor would be.
	e.mustRun(b, req)
	var sandboxed, bare []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		r := e.mustRun(b, req)
		sandboxed = append(sandboxed, time.Since(t0))
		if string(r.stdout) != "hello\n" {
			b.Fatalf("stdout %q", r.stdout)
		}
		t0 = time.Now()
		if out, err := exec.Command(node, "-e", "").CombinedOutput(); err != nil {
			b.Fatalf("node -e: %v %s", err, out)
		}
		bare = append(bare, time.Since(t0))
	}
	b.StopTimer()
	sp50, sp95 := percentile(sandboxed, 50), percentile(sandboxed, 95)
	np50, np95 := percentile(bare, 50), percentile(bare, 95)
	b.ReportMetric(ms(sp50), "execute-p50-ms")
	b.ReportMetric(ms(sp95), "execute-p95-ms")
	b.ReportMetric(ms(np50), "bare-node-p50-ms")
	b.ReportMetric(ms(np95), "bare-node-p95-ms")
	b.ReportMetric(ms(sp50)/ms(np50), "ratio-p50")
	b.ReportMetric(ms(sp95)/ms(np95), "ratio-p95")
	if b.N >= 30 {
		ver, _ := exec.Command(node, "--version").Output()
		fmt.Printf("\nhello world over %d runs (baseline: the image's node %s run on the host):\n", b.N, strings.TrimSpace(string(ver)))
		fmt.Printf("  %-28s p50 %7.1f ms   p95 %7.1f ms\n", "Execute (gRPC, sandbox)", ms(sp50), ms(sp95))
		fmt.Printf("  %-28s p50 %7.1f ms   p95 %7.1f ms\n", "bare node -e ''", ms(np50), ms(np95))
		fmt.Printf("  %-28s p50 %7.2fx     p95 %7.2fx\n\n", "ratio", ms(sp50)/ms(np50), ms(sp95)/ms(np95))
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
