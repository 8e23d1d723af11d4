package egress

import (
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
	"github.com/sandpit-run/sandpit/services/policy"
)

// TestPolicyReloadsCounted changes the policy file to a good and then a
// broken policy: each change is counted once by its result, an unchanged
// file not at all, and the broken one leaves the good one in force.
func TestPolicyReloadsCounted(t *testing.T) {
	path, write := policyFile(t)
	write("version: 1\ndefault: allow\n")
	base, loaded, err := loadPolicy(path, false)
	if err != nil {
		t.Fatal(err)
	}
	var current atomic.Pointer[policy.Compiled]
	current.Store(base)
	reg := prometheus.NewRegistry()
	w := &policyWatch{path: path, base: &current, mtime: loaded, reloads: newReloads(reg), log: slog.New(slog.DiscardHandler)}
	reloads := func(result string) float64 {
		return metricstest.Value(t, reg, "sandpit_policy_reloads_total", map[string]string{"result": result})
	}
	decision := func() policyv1.Decision {
		return current.Load().Decide(policy.Request{Method: "GET", Host: "api.example.com", Path: "/"}).Decision
	}

	w.check()
	if ok, failed := reloads("ok"), reloads("failed"); ok != 0 || failed != 0 {
		t.Fatalf("unchanged file: %v ok, %v failed; want none", ok, failed)
	}
	write("version: 1\ndefault: deny\n")
	w.check()
	w.check()
	if ok, failed := reloads("ok"), reloads("failed"); ok != 1 || failed != 0 || decision() != policyv1.Decision_DECISION_DENY {
		t.Fatalf("good change: %v ok, %v failed, decision %v; want 1, 0, deny", ok, failed, decision())
	}
	write("version: 1\ndefault: maybe\n")
	w.check()
	w.check()
	if ok, failed := reloads("ok"), reloads("failed"); ok != 1 || failed != 1 || decision() != policyv1.Decision_DECISION_DENY {
		t.Fatalf("broken change: %v ok, %v failed, decision %v; want 1, 1 and the previous policy's deny", ok, failed, decision())
	}
	metricstest.CheckLabel(t, reg, "result", []string{"ok", "failed"})
}

// policyFile is a policy file path in a fresh directory and a write that
// replaces its content, each write with a later mtime: a file system's mtime
// may be too coarse to tell two writes apart.
func policyFile(t *testing.T) (path string, write func(yaml string)) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "policy.yaml")
	mtime := time.Now().Add(-time.Hour)
	return path, func(y string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
		mtime = mtime.Add(time.Second)
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
}
