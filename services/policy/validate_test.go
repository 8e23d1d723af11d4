package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

func TestValidate(t *testing.T) {
	allow, deny := policyv1.Action_ACTION_ALLOW, policyv1.Action_ACTION_DENY
	host := func(h string, rules ...*policyv1.Rule) *policyv1.HostPolicy {
		return &policyv1.HostPolicy{Host: h, Rules: rules}
	}
	manyHosts := make([]*policyv1.HostPolicy, MaxHosts+1)
	for i := range manyHosts {
		manyHosts[i] = host(fmt.Sprintf("h%d.example.com", i))
	}
	manyRules := make([]*policyv1.Rule, MaxRulesPerHost+1)
	for i := range manyRules {
		manyRules[i] = &policyv1.Rule{Action: allow}
	}
	tests := []struct {
		name   string
		policy *policyv1.Policy
		field  string // "" with reason "" means valid
		reason string
	}{
		{name: "empty is valid", policy: &policyv1.Policy{}},
		{name: "full is valid", policy: &policyv1.Policy{
			Mode: policyv1.Mode_MODE_AUDIT, DefaultAction: allow,
			Hosts: []*policyv1.HostPolicy{
				host("api.stripe.com",
					&policyv1.Rule{Id: "a.b:c-d_e", Methods: []string{"GET", "M-SEARCH", "PROPFIND"}, Path: "/v1/*/x/**", Action: allow, Websocket: true},
					&policyv1.Rule{Action: deny, Reason: "nope — not today"},
				),
				host("*.stripe.com"),
				host("10.0.0.1"),
				host("[::1]"),
				host("s3_bucket.example.com"),
			},
			Limits: &policyv1.PolicyLimits{MaxRequests: 1},
		}},
		{name: "nil policy", policy: nil, field: "", reason: "no policy"},
		{name: "unknown mode", policy: &policyv1.Policy{Mode: 9}, field: "mode", reason: "unknown mode"},
		{name: "unknown default", policy: &policyv1.Policy{DefaultAction: 9}, field: "default_action", reason: "unknown action"},
		{name: "too many hosts", policy: &policyv1.Policy{Hosts: manyHosts}, field: "hosts", reason: "at most 256"},
		{name: "empty host", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("")}}, field: "hosts[0].host", reason: "required"},
		{name: "bare star", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("*")}}, field: "hosts[0].host", reason: "bare"},
		{name: "wildcard tld", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("*.com")}}, field: "hosts[0].host", reason: "two labels"},
		{name: "host with port", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com:443")}}, field: "hosts[0].host", reason: "port"},
		{name: "wildcard over ip", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("*.10.0.0.1")}}, field: "hosts[0].host", reason: "IP"},
		{name: "slash in host", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a/b.com")}}, field: "hosts[0].host", reason: "contains byte 0x2f"},
		{name: "duplicate after canonicalizing", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("x.bücher.example"), host("X.xn--bcher-kva.example.")}}, field: "hosts[1].host", reason: "already named by hosts[0].host"},
		{name: "unknown host default", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{{Host: "a.com", DefaultAction: 5}}}, field: "hosts[0].default_action", reason: "unknown action"},
		{name: "too many rules", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", manyRules...)}}, field: "hosts[0].rules", reason: "at most 256"},
		{name: "rule without action", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Path: "/"})}}, field: "hosts[0].rules[0].action", reason: "required"},
		{name: "rule unknown action", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: 3})}}, field: "hosts[0].rules[0].action", reason: "unknown action"},
		{name: "lowercase method", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: allow, Methods: []string{"GET", "post"}})}}, field: "hosts[0].rules[0].methods[1]", reason: "uppercase (POST)"},
		{name: "method not a token", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: allow, Methods: []string{"GET POST"}})}}, field: "hosts[0].rules[0].methods[0]", reason: "invalid character"},
		{name: "empty method", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: allow, Methods: []string{""}})}}, field: "hosts[0].rules[0].methods[0]", reason: "empty"},
		{name: "duplicate method", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: allow, Methods: []string{"GET", "GET"}})}}, field: "hosts[0].rules[0].methods[1]", reason: "twice"},
		{name: "too many methods", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: allow, Methods: strings.Split("A B C D E F G H I J K L M N O P Q", " ")})}}, field: "hosts[0].rules[0].methods", reason: "at most 16"},
		{name: "relative path", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: allow, Path: "v1"})}}, field: "hosts[0].rules[0].path", reason: "start with"},
		{name: "long path", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: allow, Path: "/" + strings.Repeat("a", 1024)})}}, field: "hosts[0].rules[0].path", reason: "longer than 1024"},
		{name: "reserved id", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: allow, Id: "default"})}}, field: "hosts[0].rules[0].id", reason: "reserved"},
		{name: "id like a derived id", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: allow, Id: "hosts[0].rules[0]"})}}, field: "hosts[0].rules[0].id", reason: "letters, digits"},
		{name: "id with space", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: allow, Id: "my rule"})}}, field: "hosts[0].rules[0].id", reason: "letters, digits"},
		{name: "duplicate id across hosts", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{
			host("a.com", &policyv1.Rule{Action: allow, Id: "r1"}),
			host("b.com", &policyv1.Rule{Action: deny, Id: "r1"}),
		}}, field: "hosts[1].rules[0].id", reason: "already the id of hosts[0].rules[0]"},
		{name: "reason with newline", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: deny, Reason: "no\nINFO forged"})}}, field: "hosts[0].rules[0].reason", reason: "control character"},
		{name: "reason not utf-8", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: deny, Reason: "\xff"})}}, field: "hosts[0].rules[0].reason", reason: "UTF-8"},
		{name: "websocket on deny", policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{host("a.com", &policyv1.Rule{Action: deny, Websocket: true})}}, field: "hosts[0].rules[0].websocket", reason: "only allow rules"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.policy)
			if tt.field == "" && tt.reason == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Validate = %v, want an Errors", err)
			}
			for _, e := range errs {
				if e.Field == tt.field && strings.Contains(e.Reason, tt.reason) {
					return
				}
			}
			t.Errorf("Validate = %v\nwant %s: ...%s...", err, tt.field, tt.reason)
		})
	}
}

// TestValidateNilValue checks that a valid policy gives a nil interface,
// not a typed nil Errors that would compare non-nil.
func TestValidateNilValue(t *testing.T) {
	if err := Validate(&policyv1.Policy{}); err != nil {
		t.Fatalf("Validate = %#v, want nil", err)
	}
}
