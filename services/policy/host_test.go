package policy

import (
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

func TestCanonicalHost(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "api.stripe.com", want: "api.stripe.com"},
		{in: "API.Stripe.COM", want: "api.stripe.com"},
		{in: "api.stripe.com.", want: "api.stripe.com"},
		{in: "bücher.example", want: "xn--bcher-kva.example"},
		{in: "BÜCHER.example.", want: "xn--bcher-kva.example"},
		{in: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{in: "ｅｘａｍｐｌｅ.com", want: "example.com"},
		{in: "example。com", want: "example.com"},
		{in: "r3---sn-abc.googlevideo.com", want: "r3---sn-abc.googlevideo.com"},
		{in: "localhost", want: "localhost"},
		{in: "10.0.0.5", want: "10.0.0.5"},
		{in: "169.254.169.254", want: "169.254.169.254"},
		{in: "", wantErr: "empty"},
		{in: ".", wantErr: "empty"},
		{in: "example.com..", wantErr: ""},
		{in: "a..b.com", wantErr: ""},
		{in: "-a.com", wantErr: "hyphen"},
		{in: "a-.com", wantErr: "hyphen"},
		{in: "my_bucket.s3.amazonaws.com", want: "my_bucket.s3.amazonaws.com"},
		{in: "My_Bucket.s3.amazonaws.com.", want: "my_bucket.s3.amazonaws.com"},
		{in: "exa mple.com", wantErr: ""},
		{in: strings.Repeat("a", 64) + ".com", wantErr: ""},
		{in: strings.Repeat("a.", 127) + "com", wantErr: ""},
		{in: "::1", want: "::1"},
		{in: "[::1]", want: "::1"},
		{in: "[2001:DB8::0001]", want: "2001:db8::1"},
		{in: "fe80::1%eth0", wantErr: "port"},
		{in: "[::1", wantErr: "bracketed"},
		{in: "[::1]:443", wantErr: "bracketed"},
		{in: "[1.2.3.4]", wantErr: "bracketed"},
		{in: "010.0.0.1", wantErr: "numeric"},
		{in: "1.2.3", wantErr: "numeric"},
		{in: "0x7f.0.0.1", wantErr: "numeric"},
		{in: "256.0.0.1", wantErr: "numeric"},
		{in: "example.com:443", wantErr: "port"},
		{in: "a!b.com", wantErr: "invalid character"},
		{in: "a*b.com", wantErr: "invalid character"},
		{in: "xn--zz.example", wantErr: ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := CanonicalHost(tt.in)
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Fatalf("CanonicalHost(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("CanonicalHost(%q) = %q, want an error", tt.in, got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("CanonicalHost(%q) error %q, want it to mention %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestParseHostPattern(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "*.example.com", want: "*.example.com"},
		{in: "*.Example.COM.", want: "*.example.com"},
		{in: "*.bücher.example", want: "*.xn--bcher-kva.example"},
		{in: "*.a.b.example.com", want: "*.a.b.example.com"},
		{in: "10.1.2.3", want: "10.1.2.3"},
		{in: "*", wantErr: true},
		{in: "*.", wantErr: true},
		{in: "*.com", wantErr: true},
		{in: "*.*.example.com", wantErr: true},
		{in: "a.*.example.com", wantErr: true},
		{in: "*example.com", wantErr: true},
		{in: "foo*.example.com", wantErr: true},
		{in: "*.1.2.3.4", wantErr: true},
		{in: "*.0.1", wantErr: true},
		{in: "*.::1", wantErr: true},
		{in: "[::1]", want: "::1"},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseHostPattern(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseHostPattern(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("parseHostPattern(%q) = %v, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestHostMatching checks which host entry governs a request: each entry
// allows everything with its own rule id, the policy default denies.
func TestHostMatching(t *testing.T) {
	p := &policyv1.Policy{
		DefaultAction: policyv1.Action_ACTION_DENY,
		Hosts: []*policyv1.HostPolicy{
			{Host: "*.example.com", Rules: []*policyv1.Rule{{Id: "wild", Action: policyv1.Action_ACTION_ALLOW}}},
			{Host: "*.api.example.com", Rules: []*policyv1.Rule{{Id: "wild-api", Action: policyv1.Action_ACTION_ALLOW}}},
			{Host: "v1.api.example.com", Rules: []*policyv1.Rule{{Id: "exact-v1", Action: policyv1.Action_ACTION_ALLOW}}},
			{Host: "API.Stripe.com.", Rules: []*policyv1.Rule{{Id: "stripe", Action: policyv1.Action_ACTION_ALLOW}}},
			{Host: "bücher.example", Rules: []*policyv1.Rule{{Id: "idn", Action: policyv1.Action_ACTION_ALLOW}}},
			{Host: "10.0.0.5", Rules: []*policyv1.Rule{{Id: "ip", Action: policyv1.Action_ACTION_ALLOW}}},
			{Host: "[2001:db8::1]", Rules: []*policyv1.Rule{{Id: "ip6", Action: policyv1.Action_ACTION_ALLOW}}},
		},
	}
	c := mustCompile(t, p)
	tests := []struct {
		host string
		want string // rule id
	}{
		{host: "a.example.com", want: "wild"},
		{host: "a.b.example.com", want: "wild"},
		{host: "example.com", want: RuleDefault},
		{host: "badexample.com", want: RuleDefault},
		{host: "a.badexample.com", want: RuleDefault},
		{host: "example.com.evil.net", want: RuleDefault},
		{host: "api.example.com", want: "wild"},
		{host: "x.api.example.com", want: "wild-api"},
		{host: "x.y.api.example.com", want: "wild-api"},
		{host: "v1.api.example.com", want: "exact-v1"},
		{host: "x.v1.api.example.com", want: "wild-api"},
		{host: "api.stripe.com", want: "stripe"},
		{host: "API.STRIPE.COM", want: "stripe"},
		{host: "api.stripe.com.", want: "stripe"},
		{host: "stripe.com", want: RuleDefault},
		{host: "xn--bcher-kva.example", want: "idn"},
		{host: "bücher.example", want: "idn"},
		{host: "10.0.0.5", want: "ip"},
		{host: "10.0.0.6", want: RuleDefault},
		{host: "A.Example.Com.", want: "wild"},
		{host: "2001:db8::1", want: "ip6"},
		{host: "[2001:DB8:0::1]", want: "ip6"},
		{host: "::ffff:10.0.0.5", want: RuleDefault},
		{host: "under_score.example.com", want: "wild"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			d := c.Decide(Request{Method: "GET", Host: tt.host, Path: "/"})
			if d.RuleID != tt.want {
				t.Errorf("Decide(%s) rule = %q (%s), want %q", tt.host, d.RuleID, d.Reason, tt.want)
			}
		})
	}
}

func mustCompile(t testing.TB, p *policyv1.Policy) *Compiled {
	t.Helper()
	c, err := Compile(p)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return c
}
