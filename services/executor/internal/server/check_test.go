package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/identity"
	"github.com/sandpit-run/sandpit/services/policy"
)

// TestCheckedRequest: a URL becomes the request the proxy would decide,
// with the canonical host and path; what the proxy would refuse is refused.
func TestCheckedRequest(t *testing.T) {
	good := []struct {
		method, url string
		want        policy.Request
	}{
		{"GET", "https://api.stripe.com/v1/products?limit=3", policy.Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products", Scheme: "https"}},
		{"post", "HTTPS://API.Stripe.com./v1//charges", policy.Request{Method: "post", Host: "api.stripe.com", Path: "/v1/charges", Scheme: "https"}},
		{"", "http://api.github.test:8080", policy.Request{Method: "GET", Host: "api.github.test", Path: "/", Scheme: "http", Port: 8080}},
		{"GET", "https://api.stripe.com/v1/a/../products", policy.Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products", Scheme: "https"}},
	}
	for _, tt := range good {
		got, err := checkedRequest(&policyv1.CheckedRequest{Method: tt.method, Url: tt.url})
		if err != nil || got != tt.want {
			t.Errorf("%s %s = %+v, %v; want %+v", tt.method, tt.url, got, err, tt.want)
		}
	}
	bad := []string{
		"api.stripe.com/v1/products",           // not absolute
		"ftp://api.stripe.com/",                // scheme
		"https://user:pw@api.stripe.com/",      // user information
		"https://api.stripe.com:0/",            // port
		"https://api.stripe.com/v1/a%2Fb",      // encoded slash
		"https://api.stripe.com/v1/x#frag",     // fragment
		"https://" + strings.Repeat("a", 9000), // too long
	}
	for _, u := range bad {
		if got, err := checkedRequest(&policyv1.CheckedRequest{Method: "GET", Url: u}); err == nil {
			t.Errorf("%s = %+v, want an error", u, got)
		}
	}
}

// TestCheck: a caller checks its own tenant only; without tenants the
// operator's policy, the token and the inline policy decide; bad requests
// name the field.
func TestCheck(t *testing.T) {
	s := newService(t, &fakeSandboxes{run: helloRun}, nil)
	s.cfg.Egress = fakeEgress{}
	s.cfg.Tenancy = &Tenancy{Source: openTenants(t)}
	p := NewPolicyService(s, nil)
	reqs := []*policyv1.CheckedRequest{{Method: "POST", Url: "https://api.stripe.com/v1/charges"}, {Method: "GET", Url: "https://api.github.com/"}}
	acme := identity.NewContext(context.Background(), identity.Identity{Tenant: "acme"})
	resp, err := p.Check(acme, &policyv1.CheckRequest{Requests: reqs})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTenant() != "acme" || resp.GetMode() != policyv1.Mode_MODE_AUDIT || len(resp.GetVerdicts()) != 2 {
		t.Fatalf("Check as acme: %v", resp)
	}
	if v := resp.GetVerdicts()[0]; v.GetDecision() != policyv1.Decision_DECISION_ALLOW || v.GetSource() != SourceTenant {
		t.Errorf("acme's charge: %v", v)
	}
	if v := resp.GetVerdicts()[1]; v.GetDecision() != policyv1.Decision_DECISION_WOULD_BLOCK || v.GetRuleId() != "default" ||
		v.GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED {
		t.Errorf("acme's github: %v", v)
	}
	if _, err := p.Check(acme, &policyv1.CheckRequest{Tenant: "globex", Requests: reqs}); status.Code(err) != codes.PermissionDenied || reasonOf(err) != ReasonTenantMismatch {
		t.Errorf("acme checking globex: %v", err)
	}
	if _, err := p.Check(acme, &policyv1.CheckRequest{Tier: "free", Requests: reqs}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("acme checking its free tier: %v", err)
	}
	if _, err := p.Check(acme, &policyv1.CheckRequest{Token: "x", Requests: reqs}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a token on an executor without token keys: %v", err)
	}
	inline := mustPolicy(t, "version: 1\ndefault: allow\nhosts:\n  - host: api.stripe.com\n    rules: [{ id: no-charges, path: /v1/charges, action: deny }]\n    default: allow\n")
	resp, err = p.Check(acme, &policyv1.CheckRequest{Requests: reqs[:1], Policy: inline})
	if err != nil || resp.GetVerdicts()[0].GetDecision() != policyv1.Decision_DECISION_DENY || resp.GetVerdicts()[0].GetSource() != SourceInline {
		t.Errorf("acme's charge under an inline deny: %v, %v", resp, err)
	}
	invalid := []struct {
		req   *policyv1.CheckRequest
		field string
	}{
		{&policyv1.CheckRequest{}, "requests"},
		{&policyv1.CheckRequest{Requests: make([]*policyv1.CheckedRequest, MaxCheckRequests+1)}, "requests"},
		{&policyv1.CheckRequest{Token: "t", Tenant: "acme", Requests: reqs}, "token"},
		{&policyv1.CheckRequest{Requests: []*policyv1.CheckedRequest{{Method: "GET", Url: "nope"}}}, "requests[0]"},
		{&policyv1.CheckRequest{Requests: reqs, Policy: &policyv1.Policy{Mode: policyv1.Mode(9)}}, "policy.mode"},
	}
	for _, tt := range invalid {
		_, err := p.Check(acme, tt.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tt.field) {
			t.Errorf("Check(%v) = %v, want InvalidArgument naming %s", tt.req, err, tt.field)
		}
	}
	// Without tenants, the operator (here: nothing) and the inline policy.
	s.cfg.Tenancy = nil
	resp, err = p.Check(context.Background(), &policyv1.CheckRequest{Requests: reqs[:1], Policy: inline})
	if err != nil || resp.GetVerdicts()[0].GetSource() != SourceInline || resp.GetTenant() != "" {
		t.Errorf("Check without tenants: %v, %v", resp, err)
	}
	if _, err := p.Check(context.Background(), &policyv1.CheckRequest{Tenant: "acme", Requests: reqs}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("naming a tenant on an executor without tenants: %v, want FailedPrecondition", err)
	}
	s.cfg.Egress = nil
	if _, err := p.Check(context.Background(), &policyv1.CheckRequest{Requests: reqs}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Check without egress: %v, want FailedPrecondition", err)
	}
}

// TestClientCertificateNamesTheTenant: with CertTenants and no token, the
// verified client certificate's CN is the tenant; a token wins over it;
// without CertTenants a certificate names nobody.
func TestClientCertificateNamesTheTenant(t *testing.T) {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "globex"}}
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
		VerifiedChains: [][]*x509.Certificate{{cert}},
	}}})
	ten := &Tenancy{Source: openTenants(t), CertTenants: true}
	id, ok := ten.caller(ctx)
	if !ok || id.Tenant != "globex" {
		t.Fatalf("caller = %+v, %v; want globex", id, ok)
	}
	g, err := ten.resolve(id, ok, nil)
	if err != nil || g.entry.Tenant != "globex" {
		t.Fatalf("resolve: %+v, %v", g.entry, err)
	}
	if id, _ := ten.caller(identity.NewContext(ctx, identity.Identity{Tenant: "acme"})); id.Tenant != "acme" {
		t.Errorf("a token and a certificate: tenant %q, want the token's acme", id.Tenant)
	}
	ten.CertTenants = false
	if _, ok := ten.caller(ctx); ok {
		t.Error("without CertTenants a client certificate named a tenant")
	}
	// A connection whose certificate was not verified names nobody.
	unverified := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
		PeerCertificates: []*x509.Certificate{cert},
	}}})
	ten.CertTenants = true
	if _, ok := ten.caller(unverified); ok {
		t.Error("an unverified client certificate named a tenant")
	}
}

// operatorEgress is fakeEgress whose operator policy is op.
type operatorEgress struct {
	fakeEgress
	op *policy.Compiled
}

func (o operatorEgress) Policy(narrow *policy.Compiled) *policy.Compiled {
	return policy.Chain(o.op, narrow)
}

// TestCheckPassthrough: an https request to a host the operator passes
// through is reported passed through, by the entry and whatever its
// method and path, as the decision service decides its server name; an
// inline policy that names the host without passthrough makes it
// intercepted and decided by the rules, one that leaves the host out
// denies it, and neither plain http nor another host is passed through.
func TestCheckPassthrough(t *testing.T) {
	s := newService(t, &fakeSandboxes{run: helloRun}, nil)
	s.cfg.Egress = operatorEgress{op: mustCompile(t, `
version: 1
default: deny
hosts:
  - host: pay.test
    passthrough: true
  - host: api.github.test
    schemes: [https, http]
    default: allow
`).From("operator")}
	p := NewPolicyService(s, nil)
	reqs := []*policyv1.CheckedRequest{
		{Method: "POST", Url: "https://pay.test/v1/charges"},
		{Method: "GET", Url: "https://api.github.test/repos"},
		{Method: "GET", Url: "https://pay.test:8443/"},
	}
	resp, err := p.Check(context.Background(), &policyv1.CheckRequest{Requests: reqs})
	if err != nil {
		t.Fatal(err)
	}
	if v := resp.GetVerdicts()[0]; !v.GetPassthrough() || v.GetDecision() != policyv1.Decision_DECISION_ALLOW || v.GetRuleId() != "hosts[0].passthrough" ||
		v.GetSource() != "operator" || v.GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED {
		t.Errorf("POST to the pass-through host: %v, want allowed and passed through by hosts[0].passthrough", v)
	}
	if v := resp.GetVerdicts()[1]; v.GetPassthrough() || v.GetDecision() != policyv1.Decision_DECISION_ALLOW {
		t.Errorf("the intercepted host: %v, want allowed and not passed through", v)
	}
	// A port the entry does not allow: the server name is not passed
	// through, and the request is denied by its port.
	if v := resp.GetVerdicts()[2]; v.GetPassthrough() || v.GetDecision() != policyv1.Decision_DECISION_DENY ||
		v.GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_PORT_NOT_ALLOWED {
		t.Errorf("the pass-through host on another port: %v, want denied by its port, not passed through", v)
	}

	// The policies disagree: intercepted, and the inline rules decide.
	names := mustPolicy(t, "version: 1\nhosts:\n  - host: pay.test\n    rules: [{ id: no-charges, methods: [POST], path: /v1/charges, action: deny }]\n    default: allow\n")
	resp, err = p.Check(context.Background(), &policyv1.CheckRequest{Requests: reqs[:1], Policy: names})
	if v := resp.GetVerdicts()[0]; err != nil || v.GetPassthrough() || v.GetDecision() != policyv1.Decision_DECISION_DENY || v.GetRuleId() != "no-charges" ||
		v.GetSource() != SourceInline {
		t.Errorf("inline policy intercepting pay.test: %v, %v; want denied by its no-charges rule, not passed through", v, err)
	}
	// A narrower policy that leaves the host out denies it.
	other := mustPolicy(t, "version: 1\nhosts:\n  - host: api.github.test\n    default: allow\n")
	resp, err = p.Check(context.Background(), &policyv1.CheckRequest{Requests: reqs[:1], Policy: other})
	if v := resp.GetVerdicts()[0]; err != nil || v.GetPassthrough() || v.GetDecision() != policyv1.Decision_DECISION_DENY ||
		v.GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED || v.GetSource() != SourceInline {
		t.Errorf("inline policy without pay.test: %v, %v; want denied (host_not_allowed), not passed through", v, err)
	}
	// In audit mode the denial is a would-block pass-through, as the
	// proxy splices it.
	audit := mustPolicy(t, "version: 1\nmode: audit\nhosts:\n  - host: api.github.test\n    default: allow\n")
	resp, err = p.Check(context.Background(), &policyv1.CheckRequest{Requests: reqs[:1], Policy: audit})
	if v := resp.GetVerdicts()[0]; err != nil || !v.GetPassthrough() || v.GetDecision() != policyv1.Decision_DECISION_WOULD_BLOCK ||
		v.GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED {
		t.Errorf("audit inline policy without pay.test: %v, %v; want a would-block pass-through", v, err)
	}
	// Plain http is never spliced.
	resp, err = p.Check(context.Background(), &policyv1.CheckRequest{Requests: []*policyv1.CheckedRequest{{Method: "GET", Url: "http://pay.test/"}}})
	if v := resp.GetVerdicts()[0]; err != nil || v.GetPassthrough() || v.GetDecision() != policyv1.Decision_DECISION_DENY {
		t.Errorf("http to the pass-through host: %v, %v; want denied (its schemes), not passed through", v, err)
	}
}
