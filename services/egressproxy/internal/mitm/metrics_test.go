package mitm

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
)

// TestMintMetricsAndCached: the minted counter and cache gauge follow what
// Certificate does, and Cached tells a hit from a mint ahead of time.
func TestMintMetricsAndCached(t *testing.T) {
	m := NewMinter(newTestCA(t), 2)
	reg := prometheus.NewRegistry()
	m.Register(reg)
	if m.Cached("a.test") {
		t.Fatal("Cached before any mint")
	}
	for _, h := range []string{"a.test", "A.TEST", "b.test", "c.test"} {
		if _, err := m.Certificate(h); err != nil {
			t.Fatal(err)
		}
	}
	if !m.Cached("c.test") || !m.Cached("B.test") || m.Cached("a.test") || m.Cached("not a name") {
		t.Error("Cached disagrees with the LRU: want b and c, a evicted")
	}
	if got := metricstest.Value(t, reg, "sandpit_egress_leaves_minted_total", nil); got != 3 {
		t.Errorf("minted %v, want 3 (A.TEST is a.test)", got)
	}
	if got := metricstest.Value(t, reg, "sandpit_egress_leaf_cache_entries", nil); got != 2 {
		t.Errorf("cache entries %v, want 2", got)
	}
}

// TestLeafMemory measures what one cached leaf holds, the figure behind
// DefaultLeafCacheSize's comment.
func TestLeafMemory(t *testing.T) {
	const n = 300
	m := NewMinter(newTestCA(t), n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		if _, err := m.Certificate(fmt.Sprintf("host-%d.example.test", i)); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("one cached leaf: about %d bytes of heap", per)
	if per > 8<<10 {
		t.Fatalf("a cached leaf holds %d bytes, over 8 KiB", per)
	}
	runtime.KeepAlive(m)
}
