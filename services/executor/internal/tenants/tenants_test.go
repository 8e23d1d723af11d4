package tenants

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy"
)

const (
	stripePolicy = `version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { id: products, methods: [GET], path: /v1/products, action: allow }
      - { id: charges, methods: [POST], path: /v1/charges, action: allow }
`
	// Narrows the above: charges are taken away.
	noCharges = `version: 1
default: allow
hosts:
  - host: api.stripe.com
    rules:
      - { id: no-charges, methods: [POST], path: /v1/charges, action: deny }
    default: allow
`
	tenantsFile = `version: 1
tenants:
  - tenant: acme
    policy: stripe.yaml
    limits: { max_concurrent: 4, executions_per_minute: 60, max_timeout: 30s, max_memory: 512MiB, max_requests: 100 }
    tiers:
      - tier: free
        policy: no-charges.yaml
        limits: { max_concurrent: 1, max_timeout: 1m }
      - tier: pro
  - tenant: globex
    mode: audit
    policy: no-charges.yaml
`
)

func write(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func decide(e Entry, method, path string) policyv1.Decision {
	return e.Policy.Decide(policy.Request{Method: method, Host: "api.stripe.com", Path: path}).Decision
}

func TestLookupTenantsAndTiers(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, map[string]string{"tenants.yaml": tenantsFile, "stripe.yaml": stripePolicy, "no-charges.yaml": noCharges})
	s, err := Load(filepath.Join(dir, "tenants.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	acme, err := s.Lookup("acme", "")
	if err != nil {
		t.Fatal(err)
	}
	if decide(acme, "GET", "/v1/products") != policyv1.Decision_DECISION_ALLOW || decide(acme, "POST", "/v1/charges") != policyv1.Decision_DECISION_ALLOW {
		t.Error("acme's own policy does not allow products and charges")
	}
	want := Limits{MaxConcurrent: 4, ExecutionsPerMinute: 60, MaxTimeout: 30 * time.Second, MaxMemoryBytes: 512 << 20, MaxRequests: 100}
	if acme.Limits != want || acme.Audit {
		t.Errorf("acme: limits %+v audit %v, want %+v enforce", acme.Limits, acme.Audit, want)
	}

	free, err := s.Lookup("acme", "free")
	if err != nil {
		t.Fatal(err)
	}
	// The tier's policy narrows the tenant's; its limits only lower.
	if decide(free, "GET", "/v1/products") != policyv1.Decision_DECISION_ALLOW || decide(free, "POST", "/v1/charges") != policyv1.Decision_DECISION_DENY {
		t.Error("acme/free: want products allowed and charges denied (the tier narrows)")
	}
	want.MaxConcurrent = 1 // max_timeout 1m is looser than 30s: 30s stays
	if free.Limits != want || free.Tier != "free" {
		t.Errorf("acme/free limits %+v, want %+v", free.Limits, want)
	}
	// A tier with neither policy nor limits is the tenant's entry.
	if pro, err := s.Lookup("acme", "pro"); err != nil || pro.Limits != acme.Limits || decide(pro, "POST", "/v1/charges") != policyv1.Decision_DECISION_ALLOW {
		t.Errorf("acme/pro: %+v, %v; want acme's entry", pro, err)
	}

	globex, err := s.Lookup("globex", "")
	if err != nil || !globex.Audit {
		t.Errorf("globex: %+v, %v; want audit", globex, err)
	}
	// Unknown tenants and tiers get nothing, not a default.
	if _, err := s.Lookup("initech", ""); !errors.Is(err, ErrUnknownTenant) {
		t.Errorf("unknown tenant: %v", err)
	}
	if _, err := s.Lookup("acme", "enterprise"); !errors.Is(err, ErrUnknownTier) {
		t.Errorf("unknown tier: %v", err)
	}
	if _, err := s.Lookup("ACME", ""); !errors.Is(err, ErrUnknownTenant) {
		t.Errorf("tenant names are exact: %v", err)
	}
}

func TestBadTenantsFilesAreRefused(t *testing.T) {
	for _, tt := range []struct{ name, file, want string }{
		{"empty", "", "empty tenants file"},
		{"no version", "tenants: []\n", "version"},
		{"wrong version", "version: 2\ntenants: []\n", "version"},
		{"unknown key", "version: 1\ntenats: []\n", "tenats"},
		{"unknown tenant key", "version: 1\ntenants:\n  - { tenant: a, policy: p.yaml, polcy: x }\n", "polcy"},
		{"no policy", "version: 1\ntenants:\n  - tenant: a\n", "needs a policy"},
		{"missing policy file", "version: 1\ntenants:\n  - { tenant: a, policy: gone.yaml }\n", "gone.yaml"},
		{"broken policy file", "version: 1\ntenants:\n  - { tenant: a, policy: bad.yaml }\n", "bad.yaml"},
		{"bad name", "version: 1\ntenants:\n  - { tenant: 'a b', policy: p.yaml }\n", "not a tenant name"},
		{"duplicate tenant", "version: 1\ntenants:\n  - { tenant: a, policy: p.yaml }\n  - { tenant: a, policy: p.yaml }\n", "twice"},
		{"duplicate tier", "version: 1\ntenants:\n  - { tenant: a, policy: p.yaml, tiers: [{ tier: x }, { tier: x }] }\n", "twice"},
		{"bad mode", "version: 1\ntenants:\n  - { tenant: a, policy: p.yaml, mode: permissive }\n", "enforce or audit"},
		{"bad timeout", "version: 1\ntenants:\n  - { tenant: a, policy: p.yaml, limits: { max_timeout: soon } }\n", "max_timeout"},
		{"bad memory", "version: 1\ntenants:\n  - { tenant: a, policy: p.yaml, limits: { max_memory: 1GB } }\n", "max_memory"},
		{"memory below the floor", "version: 1\ntenants:\n  - { tenant: a, policy: p.yaml, limits: { max_memory: 16MiB } }\n", "below the executor's floor"},
		{"timeout below the floor", "version: 1\ntenants:\n  - { tenant: a, policy: p.yaml, limits: { max_timeout: 10ms } }\n", "below the executor's floor"},
		{"negative limit", "version: 1\ntenants:\n  - { tenant: a, policy: p.yaml, limits: { max_concurrent: -1 } }\n", "line 3"},
		{"two documents", "version: 1\ntenants: []\n---\nversion: 1\n", "more than one"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, map[string]string{"tenants.yaml": tt.file, "p.yaml": stripePolicy, "bad.yaml": "version: 1\nhosts: [{ host: 'a b' }]\n"})
			_, err := Load(filepath.Join(dir, "tenants.yaml"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// TestCheckSecret: a secret name and 1 to MaxSecretBytes bytes, tab but no
// other control character; the error never holds the value.
func TestCheckSecret(t *testing.T) {
	for _, tt := range []struct {
		name, value string
		ok          bool
	}{
		{"stripe", "sk_live_abc", true},
		{"tabbed", "a\tb", true},
		{"largest", strings.Repeat("k", MaxSecretBytes), true},
		{"Stripe", "x", false},
		{"../stripe", "x", false},
		{"empty", "", false},
		{"big", strings.Repeat("k", MaxSecretBytes+1), false},
		{"crlf", "sk_live_SECRET\r\nX-Injected: 1", false},
		{"nul", "sk_live_SECRET\x00", false},
		{"del", "sk_live_SECRET\x7f", false},
	} {
		err := CheckSecret(tt.name, []byte(tt.value))
		if (err == nil) != tt.ok || err != nil && strings.Contains(err.Error(), "SECRET") {
			t.Errorf("CheckSecret(%q, %.20q) = %v; want ok %v, and no value in the error", tt.name, tt.value, err, tt.ok)
		}
	}
}
