package sandbox

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
)

// TestWarmHeader: what warm_wait.mjs reads is a big-endian length and the
// arguments and the environment in order, values keeping their "=".
func TestWarmHeader(t *testing.T) {
	h, err := warmHeader(Spec{Args: []string{"a", "b c"}, Env: []string{"PATH=/bin", "Z=1", "A=x=y", "EMPTY="}})
	if err != nil {
		t.Fatal(err)
	}
	n := binary.BigEndian.Uint32(h)
	if int(n) != len(h)-4 {
		t.Fatalf("length %d, body %d bytes", n, len(h)-4)
	}
	var got struct {
		Argv []string
		Env  [][2]string
	}
	if err := json.Unmarshal(h[4:], &got); err != nil {
		t.Fatal(err)
	}
	want := [][2]string{{"PATH", "/bin"}, {"Z", "1"}, {"A", "x=y"}, {"EMPTY", ""}}
	if strings.Join(got.Argv, "|") != "a|b c" || len(got.Env) != len(want) {
		t.Fatalf("header %+v", got)
	}
	for i := range want {
		if got.Env[i] != want[i] {
			t.Errorf("env[%d] = %q, want %q", i, got.Env[i], want[i])
		}
	}
	// No arguments is an empty list, which the module spreads.
	h, _ = warmHeader(Spec{})
	if !bytes.Contains(h, []byte(`"argv":[]`)) {
		t.Errorf("header without arguments: %s", h[4:])
	}
}

// TestClaimWriter: before the claim, output is kept (bounded) and the
// ready mark noticed; after it, output goes to the execution's writer only.
func TestClaimWriter(t *testing.T) {
	c := &claimWriter{ready: make(chan struct{})}
	c.Write([]byte("boot noise "))
	select {
	case <-c.ready:
		t.Fatal("ready before the mark")
	default:
	}
	c.Write(readyMark[:5])
	c.Write(readyMark[5:]) // split across writes
	select {
	case <-c.ready:
	default:
		t.Fatal("mark split across writes not seen")
	}
	c.Write(readyMark) // a second mark closes nothing twice
	c.Write(bytes.Repeat([]byte("x"), 2*maxEarlyOutput))
	if len(c.early()) > maxEarlyOutput {
		t.Errorf("kept %d bytes before the claim, bound %d", len(c.early()), maxEarlyOutput)
	}
	var out bytes.Buffer
	c.claim(&out)
	c.Write([]byte("program"))
	if out.String() != "program" {
		t.Errorf("after the claim the execution got %q", out.String())
	}
}

// TestClaimCgroup: the claim writes the request's limits into the
// sandbox's cgroup and takes the boot's usage as the baseline; v1 orders
// memory and memory+swap so that the second never falls below the first.
func TestClaimCgroup(t *testing.T) {
	l := limits.Defaults
	l.MemoryBytes, l.CPUMillicores, l.Pids = 512*limits.MiB, 250, 64

	t.Run("v1 raised", func(t *testing.T) {
		cgroupRoot = t.TempDir()
		writeFiles(t, cgroupRoot, map[string]string{
			"memory/ns/x1/memory.limit_in_bytes":       "268435456",
			"memory/ns/x1/memory.memsw.limit_in_bytes": "268435456",
			"memory/ns/x1/memory.max_usage_in_bytes":   "41000000",
			"memory/ns/x1/memory.oom_control":          "oom_kill 0\n",
			"cpu/ns/x1/cpu.cfs_quota_us":               "100000",
			"cpu/ns/x1/cpu.cfs_period_us":              "100000",
			"pids/ns/x1/pids.max":                      "128",
			"cpuacct/ns/x1/cpuacct.usage":              "70000000",
		})
		base, err := claimCgroup("/ns/x1", l)
		if err != nil {
			t.Fatal(err)
		}
		if base.cpu != 70*time.Millisecond || base.peak != nil {
			t.Errorf("baseline %+v", base)
		}
		wantFiles(t, map[string]string{
			"memory/ns/x1/memory.limit_in_bytes":       "536870912",
			"memory/ns/x1/memory.memsw.limit_in_bytes": "536870912",
			"memory/ns/x1/memory.max_usage_in_bytes":   "0",
			"cpu/ns/x1/cpu.cfs_quota_us":               "25000",
			"pids/ns/x1/pids.max":                      "64",
		})
	})
	t.Run("v2", func(t *testing.T) {
		cgroupRoot = t.TempDir()
		writeFiles(t, cgroupRoot, map[string]string{
			"ns/x1/memory.max":    "268435456",
			"ns/x1/memory.peak":   "41000000",
			"ns/x1/memory.events": "oom_kill 0\n",
			"ns/x1/cpu.max":       "100000 100000",
			"ns/x1/pids.max":      "128",
			"ns/x1/cpu.stat":      "usage_usec 70000\n",
		})
		base, err := claimCgroup("/ns/x1", l)
		if err != nil {
			t.Fatal(err)
		}
		defer base.peak.Close()
		if base.cpu != 70*time.Millisecond || base.peak == nil {
			t.Errorf("baseline %+v", base)
		}
		wantFiles(t, map[string]string{
			"ns/x1/memory.max": "536870912",
			"ns/x1/cpu.max":    "25000 100000",
			"ns/x1/pids.max":   "64",
		})
	})
	t.Run("missing", func(t *testing.T) {
		cgroupRoot = t.TempDir()
		if _, err := claimCgroup("/ns/gone", l); err == nil {
			t.Error("claim of a missing cgroup succeeded")
		}
	})
}

// wantFiles checks the contents of files under cgroupRoot.
func wantFiles(t *testing.T, want map[string]string) {
	t.Helper()
	for f, w := range want {
		if got, _ := os.ReadFile(filepath.Join(cgroupRoot, f)); string(got) != w {
			t.Errorf("%s = %q, want %q", f, got, w)
		}
	}
}

// TestImageCache: an entry serves as it is only while events are followed,
// otherwise only for its digest; emptying the cache (an image event, or
// following starting or stopping) drops a resolve that raced it.
func TestImageCache(t *testing.T) {
	var c imageCache
	img := Image{Ref: "sandpit.local/node:24", Digest: "sha256:a"}
	c.put(img, c.generation())
	if _, ok := c.watched(img.Ref); ok {
		t.Error("served without question while events are not followed")
	}
	if _, ok := c.get(img.Ref, "sha256:b"); ok {
		t.Error("served for another digest")
	}
	if got, ok := c.get(img.Ref, "sha256:a"); !ok || got != img {
		t.Error("not served for its digest")
	}
	c.follow(true)
	if _, ok := c.watched(img.Ref); ok {
		t.Error("an entry from before following survived it")
	}
	gen := c.generation()
	c.put(img, gen)
	if _, ok := c.watched(img.Ref); !ok {
		t.Error("not served while events are followed")
	}
	gen = c.generation()
	c.follow(true) // an image event
	c.put(img, gen)
	if _, ok := c.get(img.Ref, img.Digest); ok {
		t.Error("a resolve that raced an image event was kept")
	}
}
