package proxy

import (
	"net/http"
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// TestRefusalBodies checks the refusal body of a deny rule, a host the
// policy does not name and a request that failed the proxy's own checks,
// over HTTP/1.1 and HTTP/2: the code is the decider's (or the proxy's),
// and the hint says what to change without naming what is allowed.
func TestRefusalBodies(t *testing.T) {
	e := setup(t)
	tests := []struct {
		name, proto, method, url string
		code, rule               string
		hint                     string // a substring of the hint
	}{
		{name: "deny rule", proto: "HTTP/1.1", method: "POST", url: "https://api.stripe.test/v1/charges", code: "rule_denied", rule: "hosts[0].rules[1]", hint: "rule hosts[0].rules[1] of the policy denies"},
		{name: "deny rule h2", proto: "HTTP/2", method: "POST", url: "https://api.stripe.test/v1/charges", code: "rule_denied", rule: "hosts[0].rules[1]", hint: "rule hosts[0].rules[1]"},
		{name: "host not in the policy", proto: "HTTP/1.1", method: "GET", url: "http://blocked.test/v1/products", code: "host_not_allowed", rule: "default", hint: "no rule allows requests to blocked.test"},
		{name: "host differs from the server name", proto: "HTTP/1.1", method: "GET", url: "https://evil.test/v1/products", code: "ambiguous_request", rule: "proxy", hint: "canonical form"},
		{name: "host differs from the server name h2", proto: "HTTP/2", method: "GET", url: "https://evil.test/v1/products", code: "ambiguous_request", rule: "proxy", hint: "canonical form"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.h1Client("api.stripe.test")
			if tt.proto == "HTTP/2" {
				c = e.h2Client("api.stripe.test")
			}
			b := expectRefused(t, get(t, c, tt.method, tt.url, nil), http.StatusForbidden, tt.code)
			if b.Rule != tt.rule || !strings.Contains(b.Hint, tt.hint) || b.Method != tt.method {
				t.Errorf("body %+v, want rule %q and a hint with %q", b, tt.rule, tt.hint)
			}
			// The decider's allow rule covers /v1/products: no refusal
			// may tell the sandbox so.
			if strings.Contains(b.Hint, "/v1/products") && tt.code == "rule_denied" {
				t.Errorf("hint %q names an allowed path", b.Hint)
			}
		})
	}
	if got := e.upstream.requests(); len(got) != 0 {
		t.Errorf("upstream saw %q", got)
	}
}

// TestUnreadableRequestRefused: bytes that are no request get 400 with
// the refusal body too.
func TestUnreadableRequestRefused(t *testing.T) {
	e := setup(t)
	b := expectRefused(t, e.raw(t, "api.stripe.test", "NOT HTTP AT ALL\r\n\r\n"), http.StatusBadRequest, "ambiguous_request")
	if b.Rule != "proxy" || b.Host != "api.stripe.test" || !strings.HasPrefix(b.Reason, "bad request") {
		t.Errorf("body %+v", b)
	}
}

// TestDenialHints gives every code a hint built from the request alone.
func TestDenialHints(t *testing.T) {
	c := &checked{method: "PUT", scheme: "https", host: "api.example.test", port: 8443, path: "/v1/things/1"}
	for n, name := range policyv1.DenialCode_name {
		code := policyv1.DenialCode(n)
		if code == policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED {
			continue
		}
		h := denialHint(code, c, verdict{rule: "hosts[0].default", source: "tenant"})
		if h == "" {
			t.Errorf("%s: no hint", name)
		}
		switch code {
		case policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED, policyv1.DenialCode_DENIAL_CODE_PATH_NOT_ALLOWED, policyv1.DenialCode_DENIAL_CODE_METHOD_NOT_ALLOWED, policyv1.DenialCode_DENIAL_CODE_PORT_NOT_ALLOWED:
			if !strings.Contains(h, "api.example.test") || !strings.Contains(h, "the tenant's policy") {
				t.Errorf("%s: hint %q names neither the host nor the tenant's policy", name, h)
			}
		}
	}
	if h := denialHint(policyv1.DenialCode_DENIAL_CODE_METHOD_NOT_ALLOWED, c, verdict{}); h != "no rule allows PUT on this path of api.example.test; the policy would need one" {
		t.Errorf("method hint %q", h)
	}
	// An oversized request's own hint says which bound.
	if h := denialHint(policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST, &checked{hint: "keep the path short"}, verdict{}); h != "keep the path short" {
		t.Errorf("oversized hint %q", h)
	}
}
