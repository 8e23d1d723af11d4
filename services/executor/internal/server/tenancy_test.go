package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/identity"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/executor/internal/tenants"
	"github.com/sandpit-run/sandpit/services/policy"
)

// tenantsFixture: acme may reach Stripe and is audited; globex only GitHub;
// acme's free tier only Stripe's products, one at a time.
const tenantsFixture = `version: 1
tenants:
  - tenant: acme
    mode: audit
    policy: acme.yaml
    limits: { max_concurrent: 2, executions_per_minute: 3, max_timeout: 5s, max_memory: 128MiB, max_requests: 20 }
    tiers:
      - tier: free
        policy: acme-free.yaml
        limits: { max_concurrent: 1 }
  - tenant: globex
    policy: globex.yaml
`

func openTenants(t *testing.T) *tenants.Store {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"tenants.yaml":   tenantsFixture,
		"acme.yaml":      "version: 1\nhosts:\n  - host: api.stripe.com\n    default: allow\n",
		"acme-free.yaml": "version: 1\nhosts:\n  - host: api.stripe.com\n    rules: [{ id: products, path: /v1/products/**, action: allow }]\n",
		"globex.yaml":    "version: 1\nhosts:\n  - host: api.github.com\n    default: allow\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st, err := tenants.Open(filepath.Join(dir, "tenants.yaml"), nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func errorInfo(err error) *errdetails.ErrorInfo {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

// TestTenantsDecideTheirOwnPolicy: each tenant's executions are decided by
// its own policy (never another's), its tier narrows it, its audit mode
// turns its denials into would-block, and the token and inline policy
// narrow further; an unknown tenant or tier and a call without identity
// are refused.
func TestTenantsDecideTheirOwnPolicy(t *testing.T) {
	ten := &Tenancy{Source: openTenants(t)}
	claims, err := policy.Claims([]string{"api.stripe.com"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	inline := mustCompile(t, "version: 1\ndefault: allow\nhosts:\n  - host: api.stripe.com\n    rules: [{ id: no-refunds, path: /v1/refunds, action: deny }]\n    default: allow\n")
	tests := []struct {
		name     string
		ident    identity.Identity
		inline   *policy.Compiled
		host     string
		path     string
		decision policyv1.Decision
		source   string
	}{
		{name: "acme reaches stripe", ident: identity.Identity{Tenant: "acme"}, host: "api.stripe.com", path: "/v1/charges", decision: policyv1.Decision_DECISION_ALLOW, source: SourceTenant},
		{name: "acme is audited", ident: identity.Identity{Tenant: "acme"}, host: "api.github.com", path: "/", decision: policyv1.Decision_DECISION_WOULD_BLOCK, source: SourceTenant},
		{name: "globex never gets acme's stripe", ident: identity.Identity{Tenant: "globex"}, host: "api.stripe.com", path: "/v1/charges", decision: policyv1.Decision_DECISION_DENY, source: SourceTenant},
		{name: "globex reaches github", ident: identity.Identity{Tenant: "globex"}, host: "api.github.com", path: "/", decision: policyv1.Decision_DECISION_ALLOW, source: SourceTenant},
		{name: "acme free: products only (audited)", ident: identity.Identity{Tenant: "acme", Tier: "free"}, host: "api.stripe.com", path: "/v1/charges", decision: policyv1.Decision_DECISION_WOULD_BLOCK, source: SourceTenant},
		{name: "token narrows globex", ident: identity.Identity{Tenant: "globex", Policy: claims}, host: "api.github.com", path: "/", decision: policyv1.Decision_DECISION_DENY, source: SourceToken},
		{name: "inline narrows and enforces under an audited tenant", ident: identity.Identity{Tenant: "acme"}, inline: inline, host: "api.stripe.com", path: "/v1/refunds", decision: policyv1.Decision_DECISION_DENY, source: SourceInline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := ten.resolve(tt.ident, true, tt.inline)
			if err != nil {
				t.Fatal(err)
			}
			d := policy.Chain(g.policy).Decide(policy.Request{Method: "POST", Host: tt.host, Path: tt.path})
			if d.Decision != tt.decision || d.Source != tt.source {
				t.Errorf("Decide = %v by %q (%s %s), want %v by %q", d.Decision, d.Source, d.RuleID, d.Reason, tt.decision, tt.source)
			}
		})
	}
	g, err := ten.resolve(identity.Identity{Tenant: "acme"}, true, nil)
	if err != nil || g.policy.Limits().MaxRequests != 20 || g.policy.Mode() != policyv1.Mode_MODE_AUDIT {
		t.Errorf("acme's policy: limits %+v mode %v (%v), want max_requests 20 and audit", g.policy.Limits(), g.policy.Mode(), err)
	}

	refusals := []struct {
		name   string
		ident  identity.Identity
		authed bool
		code   codes.Code
		reason string
	}{
		{name: "unknown tenant", ident: identity.Identity{Tenant: "initech"}, authed: true, code: codes.PermissionDenied, reason: ReasonTenantUnknown},
		{name: "unknown tier", ident: identity.Identity{Tenant: "acme", Tier: "gold"}, authed: true, code: codes.PermissionDenied, reason: ReasonTierUnknown},
		{name: "no identity", authed: false, code: codes.Unauthenticated, reason: ReasonIdentityRequired},
		{name: "identity without a tenant", ident: identity.Identity{Tier: "free"}, authed: true, code: codes.Unauthenticated, reason: ReasonIdentityRequired},
	}
	for _, tt := range refusals {
		_, err := ten.resolve(tt.ident, tt.authed, nil)
		if status.Code(err) != tt.code || reasonOf(err) != tt.reason {
			t.Errorf("%s: %v, want %v %s", tt.name, err, tt.code, tt.reason)
		}
	}
}

// TestTenantLimits: a timeout or memory limit asked above the tenant's
// maximum is PermissionDenied naming the limit and its value; defaults above
// it are lowered to it.
func TestTenantLimits(t *testing.T) {
	ten := &Tenancy{Source: openTenants(t)}
	g, err := ten.resolve(identity.Identity{Tenant: "acme"}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	set := limits.Defaults // 10s and 256 MiB: above acme's
	if err := g.fitLimits(&set, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if set.Timeout != 5*time.Second || set.MemoryBytes != 128*limits.MiB {
		t.Errorf("defaults fitted to %v and %d bytes, want 5s and 128 MiB", set.Timeout, set.MemoryBytes)
	}
	for field, want := range map[string][2]string{limitsFieldTimeout: {limitMaxTimeout, "5s"}, limitsFieldMemory: {limitMaxMemory, "128MiB"}} {
		set := limits.Defaults
		err := g.fitLimits(&set, func(f string) bool { return f == field })
		ei := errorInfo(err)
		if status.Code(err) != codes.PermissionDenied || ei == nil || ei.GetReason() != ReasonTenantLimitExceeded ||
			ei.GetMetadata()["limit"] != want[0] || ei.GetMetadata()["value"] != want[1] || ei.GetMetadata()["tenant"] != "acme" {
			t.Errorf("%s asked above acme's: %v %v, want PermissionDenied %s naming %s=%s", field, err, ei, ReasonTenantLimitExceeded, want[0], want[1])
		}
	}
	// globex has no limits of its own: the executor's stand.
	g, err = ten.resolve(identity.Identity{Tenant: "globex"}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	set = limits.Defaults
	if err := g.fitLimits(&set, func(string) bool { return true }); err != nil || set != limits.Defaults {
		t.Errorf("globex's limits changed to %+v (%v)", set, err)
	}
}

// TestTenantQuotas: concurrent executions are bounded per tenant and per
// tier, executions a minute per tenant; a refusal is ResourceExhausted
// naming the limit, with a retry delay, and spends nothing; ending an
// execution frees its place, and the map forgets idle tenants.
func TestTenantQuotas(t *testing.T) {
	ten := &Tenancy{Source: openTenants(t)}
	grantOf := func(tenant, tier string) grant {
		g, err := ten.resolve(identity.Identity{Tenant: tenant, Tier: tier}, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	quotaErr := func(err error, limit, value string) {
		t.Helper()
		ei := errorInfo(err)
		if status.Code(err) != codes.ResourceExhausted || ei.GetReason() != ReasonTenantQuotaExceeded || ei.GetMetadata()["limit"] != limit || ei.GetMetadata()["value"] != value {
			t.Fatalf("got %v %v, want ResourceExhausted %s naming %s=%s", err, ei, ReasonTenantQuotaExceeded, limit, value)
		}
		var retry bool
		for _, d := range status.Convert(err).Details() {
			_, retry = d.(*errdetails.RetryInfo)
			if retry {
				break
			}
		}
		if !retry {
			t.Fatalf("%v has no RetryInfo", err)
		}
	}
	free, acme := grantOf("acme", "free"), grantOf("acme", "")
	endFree, err := ten.admit(free)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ten.admit(free)
	quotaErr(err, limitMaxConcurrent, "1") // the tier's
	endAcme, err := ten.admit(acme)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ten.admit(acme)
	quotaErr(err, limitMaxConcurrent, "2") // the tenant's, free's included
	endFree()
	endAcme()
	// Two of acme's three a minute are spent; the refusals above spent none.
	end, err := ten.admit(acme)
	if err != nil {
		t.Fatal(err)
	}
	end()
	_, err = ten.admit(acme)
	quotaErr(err, limitPerMinute, "3")
	// globex has no quotas, and its uses leave nothing behind.
	for range 10 {
		end, err := ten.admit(grantOf("globex", ""))
		if err != nil {
			t.Fatal(err)
		}
		end()
	}
	ten.mu.Lock()
	_, kept := ten.quota["globex"]
	ten.mu.Unlock()
	if kept {
		t.Error("an idle tenant without quotas is still in the quota map")
	}
}

// TestExecuteUnderTenants: Execute refuses before any sandbox exists when
// the tenant is unknown, and Started names the tenant, tier and audit mode.
func TestExecuteUnderTenants(t *testing.T) {
	ran := 0
	sb := &fakeSandboxes{run: func(ctx context.Context, spec sandbox.Spec, started func()) (sandbox.Outcome, error) {
		ran++
		return helloRun(ctx, spec, started)
	}}
	s := newService(t, sb, nil)
	s.cfg.Tenancy = &Tenancy{Source: openTenants(t)}
	ctx := identity.NewContext(context.Background(), identity.Identity{Tenant: "initech"})
	err := s.Execute(&executorv1.ExecuteRequest{Code: "1"}, &fakeStream{ctx: ctx})
	if status.Code(err) != codes.PermissionDenied || reasonOf(err) != ReasonTenantUnknown {
		t.Fatalf("unknown tenant: %v", err)
	}
	if ran != 0 {
		t.Fatal("a sandbox ran for an unknown tenant")
	}
	var narrow *policy.Compiled
	s.cfg.Egress = fakeEgress{err: errors.New("recorded"), narrow: &narrow}
	ctx = identity.NewContext(context.Background(), identity.Identity{Tenant: "acme", Tier: "free"})
	_ = s.Execute(&executorv1.ExecuteRequest{Code: "1"}, &fakeStream{ctx: ctx})
	if narrow == nil {
		t.Fatal("acme's execution was attached without a policy")
	}
	d := narrow.Decide(policy.Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/p1"})
	if d.Decision != policyv1.Decision_DECISION_ALLOW || d.Source != SourceTenant {
		t.Errorf("acme free's products: %v by %q", d.Decision, d.Source)
	}
	s.cfg.Egress = nil
	st := &fakeStream{ctx: ctx}
	if err := s.Execute(&executorv1.ExecuteRequest{Code: "1"}, st); err != nil {
		t.Fatal(err)
	}
	started := st.events[0].GetStarted()
	if started.GetTenant() != "acme" || started.GetTier() != "free" || started.GetLimits().GetTimeout().AsDuration() != 5*time.Second {
		t.Errorf("Started = %v, want acme/free with acme's 5s timeout", started)
	}
}
