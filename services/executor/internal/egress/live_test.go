package egress

import (
	"log/slog"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy"
)

// TestReloadAppliesToRunningExecution tightens the policy file under an
// execution attached before: its next decision is the new file's, and its
// inline policy still narrows the new base.
func TestReloadAppliesToRunningExecution(t *testing.T) {
	path, write := policyFile(t)
	write(`
version: 1
hosts:
  - host: api.example.com
    default: allow
  - host: other.example.com
    default: allow
`)
	base, loaded, err := loadPolicy(path, false)
	if err != nil {
		t.Fatal(err)
	}
	var current atomic.Pointer[policy.Compiled]
	current.Store(base)
	w := &policyWatch{path: path, base: &current, mtime: loaded, reloads: newReloads(prometheus.NewRegistry()), log: slog.New(slog.DiscardHandler)}
	inline, err := policy.Compile(&policyv1.Policy{
		DefaultAction: policyv1.Action_ACTION_ALLOW,
		Hosts:         []*policyv1.HostPolicy{{Host: "other.example.com", DefaultAction: policyv1.Action_ACTION_DENY}},
	})
	if err != nil {
		t.Fatal(err)
	}
	live := &livePolicy{base: &current, inline: inline}
	decide := func(host, path string) policy.Decision {
		return live.current().Decide(policy.Request{Method: "POST", Host: host, Path: path})
	}

	if d := decide("api.example.com", "/v1/charges"); d.Decision != policyv1.Decision_DECISION_ALLOW {
		t.Fatalf("before the reload: %v %q, want allow", d.Decision, d.RuleID)
	}
	if live.current() != live.current() {
		t.Error("the chain is built again although the base did not change")
	}
	if d := decide("other.example.com", "/"); d.Decision != policyv1.Decision_DECISION_DENY || d.Layer != 1 {
		t.Fatalf("inline deny before the reload: %v layer %d, want deny by layer 1", d.Decision, d.Layer)
	}

	write(`
version: 1
hosts:
  - host: api.example.com
    rules:
      - { id: no-charges, methods: [POST], path: /v1/charges, action: deny }
    default: allow
  - host: other.example.com
    default: allow
`)
	w.check()
	if d := decide("api.example.com", "/v1/charges/"); d.Decision != policyv1.Decision_DECISION_DENY || d.RuleID != "no-charges" {
		t.Fatalf("after the reload: %v %q, want deny by no-charges", d.Decision, d.RuleID)
	}
	if d := decide("api.example.com", "/v1/products"); d.Decision != policyv1.Decision_DECISION_ALLOW {
		t.Fatalf("after the reload, another path: %v %q, want allow", d.Decision, d.RuleID)
	}
	if d := decide("other.example.com", "/"); d.Decision != policyv1.Decision_DECISION_DENY || d.Layer != 1 {
		t.Fatalf("inline deny after the reload: %v layer %d, want deny by layer 1", d.Decision, d.Layer)
	}
}

// TestLivePolicyConcurrentReload races decisions against base swaps; run
// with -race.
func TestLivePolicyConcurrentReload(t *testing.T) {
	allowAll, denyAll := mustCompileYAML(t, "version: 1\ndefault: allow\n"), policy.DenyAll()
	var current atomic.Pointer[policy.Compiled]
	current.Store(allowAll)
	live := &livePolicy{base: &current}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 1000; i++ {
			if i%2 == 0 {
				current.Store(denyAll)
			} else {
				current.Store(allowAll)
			}
		}
	}()
	for i := 0; i < 1000; i++ {
		live.current().Decide(policy.Request{Method: "GET", Host: "a.example.com", Path: "/"})
	}
	<-done
	current.Store(denyAll)
	if d := live.current().Decide(policy.Request{Method: "GET", Host: "a.example.com", Path: "/"}); d.Decision != policyv1.Decision_DECISION_DENY {
		t.Fatalf("after the last swap: %v, want deny", d.Decision)
	}
}

func mustCompileYAML(t *testing.T, y string) *policy.Compiled {
	t.Helper()
	p, err := policy.Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	c, err := policy.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
