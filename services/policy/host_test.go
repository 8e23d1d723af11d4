package policy

import (
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy/canon"
)

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
		{in: "::1", want: "::1"},
		{in: "[2001:DB8::0001]", want: "2001:db8::1"},
		{in: "r3---sn-abc.googlevideo.com", want: "r3---sn-abc.googlevideo.com"},
		{in: "My_Bucket.s3.amazonaws.com.", want: "my_bucket.s3.amazonaws.com"},
		{in: "ｅｘａｍｐｌｅ.com", want: "example.com"},
		{in: "10.1.2.3.", want: "10.1.2.3"},
		// IPv4 in any other spelling than dotted decimal is refused: the
		// proxy reads each of these as another-looking address.
		{in: "010.0.0.1", wantErr: true},
		{in: "0x7f.1", wantErr: true},
		{in: "2130706433", wantErr: true},
		{in: "1.2.3", wantErr: true},
		{in: "１０.０.０.５", wantErr: true},
		{in: "[::ffff:10.0.0.5]", wantErr: true},
		{in: "::ffff:10.0.0.5", wantErr: true},
		{in: "[64:ff9b::a00:5]", wantErr: true},
		{in: "[2002:a00:5::]", wantErr: true},
		{in: "256.0.0.1", wantErr: true},
		{in: "example.com:443", wantErr: true},
		{in: "[::1]:443", wantErr: true},
		{in: "a..b.com", wantErr: true},
		{in: "xn--zz.example", wantErr: true},
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
// allows everything with its own rule id, the policy default denies. A
// host that is not canonical is refused without a rule (""); the proxy
// sends it canonical (raw, canonicalized by canon.CanonicalHost, decides
// like want).
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
		raw  bool   // not canonical: refused as is, decided as want once canonicalized
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
		{host: "API.STRIPE.COM", want: "stripe", raw: true},
		{host: "api.stripe.com.", want: "stripe", raw: true},
		{host: "stripe.com", want: RuleDefault},
		{host: "xn--bcher-kva.example", want: "idn"},
		{host: "bücher.example", want: "idn", raw: true},
		{host: "10.0.0.5", want: "ip"},
		{host: "10.0.0.6", want: RuleDefault},
		{host: "A.Example.Com.", want: "wild", raw: true},
		{host: "2001:db8::1", want: "ip6"},
		{host: "[2001:DB8:0::1]", want: "ip6", raw: true},
		{host: "::ffff:10.0.0.5", want: "ip", raw: true},
		{host: "[::ffff:10.0.0.5]", want: "ip", raw: true},
		{host: "[::ffff:a00:5]", want: "ip", raw: true},
		{host: "[::10.0.0.5]", want: "ip", raw: true},
		{host: "[64:ff9b::10.0.0.5]", want: "ip", raw: true},
		{host: "[2002:a00:5::]", want: "ip", raw: true},
		{host: "0xa000005", want: "ip", raw: true},
		{host: "10.5", want: "ip", raw: true},
		{host: "012.0.0.5", want: "ip", raw: true},
		{host: "[::ffff:10.0.0.6]", want: RuleDefault, raw: true},
		{host: "2001:db8::2", want: RuleDefault},
		{host: "under_score.example.com", want: "wild"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			want := tt.want
			if tt.raw {
				want = ""
			}
			d := c.Decide(Request{Method: "GET", Host: tt.host, Path: "/"})
			if d.RuleID != want {
				t.Errorf("Decide(%s) rule = %q (%s), want %q", tt.host, d.RuleID, d.Reason, want)
			}
			h, err := canon.CanonicalHost(tt.host)
			if err != nil {
				t.Fatalf("canon.CanonicalHost(%q): %v", tt.host, err)
			}
			if d := c.Decide(Request{Method: "GET", Host: h.Name, Path: "/"}); d.RuleID != tt.want {
				t.Errorf("Decide(%s, canonicalized to %s) rule = %q (%s), want %q", tt.host, h.Name, d.RuleID, d.Reason, tt.want)
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
