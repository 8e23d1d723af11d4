package policy

import (
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// TestCouldAllowScheme: a TLS server name could be allowed only by an entry
// that lists https (or a default that allows); ports are not its concern.
func TestCouldAllowScheme(t *testing.T) {
	c := mustParse(t, `version: 1
default: deny
hosts:
  - host: api.example.com
    ports: [8443]
    rules:
      - { id: r, methods: [GET], path: /v1/**, action: allow }
  - host: plain.example.com
    schemes: [http]
    default: allow
  - host: "*.wild.example.com"
    default: allow
  - host: closed.example.com
    default: deny
`)
	tests := []struct {
		host string
		want bool
	}{
		{"api.example.com", true},
		{"plain.example.com", false},
		{"a.wild.example.com", true},
		{"closed.example.com", false},
		{"other.example.com", false},
		{"API.example.com", false}, // not canonical
	}
	for _, tt := range tests {
		if got := c.CouldAllowScheme(tt.host, SchemeHTTPS); got != tt.want {
			t.Errorf("CouldAllowScheme(%s, https) = %v, want %v", tt.host, got, tt.want)
		}
	}
	if !c.CouldAllowHost("plain.example.com") || !c.CouldAllowScheme("plain.example.com", SchemeHTTP) {
		t.Error("an http-only entry could allow no http request")
	}
	open := mustParse(t, "version: 1\ndefault: allow\n")
	if !open.CouldAllowScheme("anything.example.org", SchemeHTTPS) {
		t.Error("a default that allows could not allow https")
	}
}

// TestCouldAllowShadowedByDeny: a deny rule for every method and path
// shuts an entry (rules decide in order): its default and the rules after
// it allow nothing, so DNS does not resolve the name and DecideTLS denies
// it; a narrower deny rule, or one after an allow rule, does not.
func TestCouldAllowShadowedByDeny(t *testing.T) {
	c := mustParse(t, `version: 1
default: deny
hosts:
  - host: shut.example.com
    rules:
      - { id: none, action: deny }
      - { id: late, path: /v1/**, action: allow }
    default: allow
  - host: shut-prefix.example.com
    rules: [{ id: none-prefix, path: "/**", action: deny }]
    default: allow
  - host: get-only.example.com
    rules: [{ id: no-get, methods: [GET], action: deny }]
    default: allow
  - host: narrow.example.com
    rules: [{ id: no-admin, path: /admin/**, action: deny }]
    default: allow
  - host: allow-first.example.com
    rules:
      - { id: v1, path: /v1/**, action: allow }
      - { id: rest, action: deny }
`)
	for host, want := range map[string]bool{
		"shut.example.com": false, "shut-prefix.example.com": false,
		"get-only.example.com": true, "narrow.example.com": true, "allow-first.example.com": true,
	} {
		if got := c.CouldAllowHost(host); got != want {
			t.Errorf("CouldAllowHost(%s) = %v, want %v", host, got, want)
		}
		if d := c.DecideTLS(host, 443); d.Forward() != want {
			t.Errorf("DecideTLS(%s) = %v (%s), want forwarded %v", host, d.Decision, d.Reason, want)
		}
		if d := c.Decide(Request{Method: "POST", Host: host, Path: "/v1/x"}); want != (d.Action == policyv1.Action_ACTION_ALLOW) {
			t.Errorf("Decide(POST %s/v1/x) = %v by %s", host, d.Action, d.RuleID)
		}
	}
}
