package egress

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy"
)

// TestPolicyFileReload changes the operator's policy file under a running
// Egress: a valid change takes effect, a broken one keeps the last good
// policy. It builds real (empty) nftables tables under its own name.
func TestPolicyFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(y string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("version: 1\ndefault: allow\n")
	e, err := New(context.Background(), Config{
		Pool: "10.252.0.0/24", ProxyGRPC: "127.0.0.1:1", ProxyPort: 1, DNSPort: 2,
		Table: "sandpit_egress_test", PolicyFile: path, IfPrefix: "sg", NamePrefix: "spegtest-",
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	}()
	req := policy.Request{Method: "GET", Host: "api.example.com", Path: "/"}
	decision := func() policyv1.Decision { return e.base.Load().Decide(req).Decision }
	waitFor := func(want policyv1.Decision) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for decision() != want {
			if time.Now().After(deadline) {
				t.Fatalf("decision %v, want %v after the file changed", decision(), want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if decision() != policyv1.Decision_DECISION_ALLOW {
		t.Fatalf("initial decision %v", decision())
	}
	write("version: 1\ndefault: deny\n")
	waitFor(policyv1.Decision_DECISION_DENY)

	write("version: 1\ndefault: maybe\n") // does not load
	time.Sleep(3 * time.Second)           // more than one poll
	if decision() != policyv1.Decision_DECISION_DENY {
		t.Errorf("a broken file replaced the policy: %v", decision())
	}
	write("version: 1\ndefault: allow\n")
	waitFor(policyv1.Decision_DECISION_ALLOW)
}

func TestNoPolicyFileDeniesAll(t *testing.T) {
	c, _, err := loadPolicy("")
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Decide(policy.Request{Method: "GET", Host: "api.example.com", Path: "/"}); d.Decision != policyv1.Decision_DECISION_DENY {
		t.Errorf("without a policy file: %v", d.Decision)
	}
	if _, _, err := loadPolicy("/does/not/exist.yaml"); err == nil {
		t.Error("a missing policy file loaded")
	}
}
