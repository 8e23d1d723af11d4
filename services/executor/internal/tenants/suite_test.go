package tenants

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.yaml.in/yaml/v3"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// backend is one kind of tenants store under the shared suite: put
// replaces every tenant (policies given as policy documents), settle waits
// until the store's state satisfies ok (the file store checks once; the
// database's follows notifications, so it is polled), metrics reads the
// store's reload metrics.
type backend interface {
	put(t *testing.T, ts []tenantDoc)
	settle(t *testing.T, what string, ok func(Source) bool)
	source() Source
	metrics() reloadMetrics
}

const brokenPolicy = "version: 1\nhosts: [{ host: 'a b' }]\n"

// runStoreSuite is the suite every store passes: lookups, limits and tier
// narrowing; a change picked up; a broken change keeping the last good
// version and saying why, then fixed; a tenant removed.
func runStoreSuite(t *testing.T, b backend) {
	acme := func(pol string) tenantDoc {
		return tenantDoc{Tenant: "acme", Policy: pol,
			Limits: limitsDoc{MaxConcurrent: 4, ExecutionsPerMinute: 60, MaxTimeout: "30s", MaxMemory: "512MiB", MaxRequests: 100},
			Tiers: []tierDoc{
				{Tier: "free", Policy: noCharges, Limits: limitsDoc{MaxConcurrent: 1, MaxTimeout: "1m"}},
				{Tier: "pro"},
			}}
	}
	globex := tenantDoc{Tenant: "globex", Mode: "audit", Policy: noCharges}
	lookup := func(s Source, tenantName, tier string) (Entry, bool) {
		e, err := s.Current().Lookup(tenantName, tier)
		return e, err == nil
	}
	charges := func(s Source, tier string) policyv1.Decision {
		e, ok := lookup(s, "acme", tier)
		if !ok {
			return policyv1.Decision_DECISION_UNSPECIFIED
		}
		return decide(e, "POST", "/v1/charges")
	}

	b.put(t, []tenantDoc{acme(stripePolicy), globex})
	b.settle(t, "the first version", func(s Source) bool { _, ok := lookup(s, "globex", ""); return ok })
	s := b.source()
	a, _ := lookup(s, "acme", "")
	want := Limits{MaxConcurrent: 4, ExecutionsPerMinute: 60, MaxTimeout: 30 * time.Second, MaxMemoryBytes: 512 << 20, MaxRequests: 100}
	if a.Limits != want || a.Audit || charges(s, "") != policyv1.Decision_DECISION_ALLOW || decide(a, "GET", "/v1/products") != policyv1.Decision_DECISION_ALLOW {
		t.Errorf("acme: %+v, charges %v; want limits %+v, enforce, products and charges allowed", a.Limits, charges(s, ""), want)
	}
	free, _ := lookup(s, "acme", "free")
	want.MaxConcurrent = 1
	if free.Limits != want || charges(s, "free") != policyv1.Decision_DECISION_DENY || decide(free, "GET", "/v1/products") != policyv1.Decision_DECISION_ALLOW {
		t.Errorf("acme/free: %+v, charges %v; want limits %+v and charges denied (the tier narrows)", free.Limits, charges(s, "free"), want)
	}
	if g, _ := lookup(s, "globex", ""); !g.Audit {
		t.Error("globex is not in audit mode")
	}
	for _, who := range [][2]string{{"initech", ""}, {"acme", "enterprise"}, {"ACME", ""}} {
		if _, ok := lookup(s, who[0], who[1]); ok {
			t.Errorf("%s/%s has an entry; unknown tenants and tiers must get none", who[0], who[1])
		}
	}

	b.put(t, []tenantDoc{acme(noCharges), globex})
	b.settle(t, "acme's narrower policy", func(s Source) bool { return charges(s, "") == policyv1.Decision_DECISION_DENY })

	failedBefore := testutil.ToFloat64(b.metrics().reloads.WithLabelValues("failed"))
	b.put(t, []tenantDoc{acme(brokenPolicy), globex})
	b.settle(t, "the broken change reported", func(s Source) bool { return s.Problem() != "" })
	if charges(s, "") != policyv1.Decision_DECISION_DENY || !strings.Contains(s.Problem(), "a b") {
		t.Errorf("after a broken change: charges %v, problem %q; want the last good version (deny) and the reason", charges(s, ""), s.Problem())
	}
	if f := testutil.ToFloat64(b.metrics().reloads.WithLabelValues("failed")); f <= failedBefore || testutil.ToFloat64(b.metrics().ok) != 0 {
		t.Errorf("after a broken change: failed reloads %v (before %v), ok %v; want more, and 0", f, failedBefore, testutil.ToFloat64(b.metrics().ok))
	}

	b.put(t, []tenantDoc{acme(stripePolicy), globex})
	b.settle(t, "the fix", func(s Source) bool { return s.Problem() == "" && charges(s, "") == policyv1.Decision_DECISION_ALLOW })
	if testutil.ToFloat64(b.metrics().ok) != 1 {
		t.Error("after the fix the ok gauge is not 1")
	}

	b.put(t, []tenantDoc{acme(stripePolicy)})
	b.settle(t, "globex removed", func(s Source) bool { _, ok := lookup(s, "globex", ""); return !ok })
}

// fileBackend writes each policy to a file of its own and a tenants file
// naming them.
type fileBackend struct {
	dir   string
	store *Store
	tick  time.Time
}

func (f *fileBackend) path() string { return filepath.Join(f.dir, "tenants.yaml") }

func (f *fileBackend) put(t *testing.T, ts []tenantDoc) {
	t.Helper()
	f.tick = f.tick.Add(2 * time.Second) // later than any mtime before, whatever the granularity
	write := func(name, content string) string {
		p := filepath.Join(f.dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, f.tick, f.tick); err != nil {
			t.Fatal(err)
		}
		return name
	}
	doc := struct {
		Version int         `yaml:"version"`
		Tenants []tenantDoc `yaml:"tenants"`
	}{Version: FileVersion}
	for _, td := range ts {
		td.Policy = write(td.Tenant+".yaml", td.Policy)
		tiers := make([]tierDoc, len(td.Tiers))
		for i, tr := range td.Tiers {
			if tr.Policy != "" {
				tr.Policy = write(fmt.Sprintf("%s-%s.yaml", td.Tenant, tr.Tier), tr.Policy)
			}
			tiers[i] = tr
		}
		td.Tiers = tiers
		doc.Tenants = append(doc.Tenants, td)
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	write("tenants.yaml", string(out))
}

func (f *fileBackend) settle(t *testing.T, what string, ok func(Source) bool) {
	t.Helper()
	f.store.Check()
	if !ok(f.store) {
		t.Fatalf("%s: not seen after a check (problem %q)", what, f.store.Problem())
	}
}

func (f *fileBackend) source() Source         { return f.store }
func (f *fileBackend) metrics() reloadMetrics { return f.store.m }

func TestFileStoreSuite(t *testing.T) {
	f := &fileBackend{dir: t.TempDir(), tick: time.Now()}
	f.put(t, nil)
	s, err := Open(f.path(), nil, discard())
	if err != nil {
		t.Fatal(err)
	}
	f.store = s
	runStoreSuite(t, f)
}
