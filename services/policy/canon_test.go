package policy

import (
	"strings"
	"testing"

	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// proxyRequest is what the egress proxy asks about a request for rawURL:
// host and path canonicalized by package canon, as the proxy does.
func proxyRequest(t *testing.T, method, rawURL string) Request {
	t.Helper()
	_, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		t.Fatalf("%q has no scheme", rawURL)
	}
	authority, target := rest, "/"
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, target = rest[:i], rest[i:]
		if target[0] == '?' {
			target = "/" + target
		}
	}
	h, _, err := canon.SplitHostPort(authority)
	if err != nil {
		t.Fatalf("canon.SplitHostPort(%q): %v", authority, err)
	}
	path, _, err := canon.CanonicalTarget(target)
	if err != nil {
		t.Fatalf("canon.CanonicalTarget(%q): %v", target, err)
	}
	return Request{Method: method, Host: h.Name, Path: path}
}

// TestIPv4Spellings checks that every spelling of an IPv4 address, the
// IPv6 ones included, is decided as that address: a policy that allows
// 1.2.3.4 allows them all, one that denies it denies them all, and none is
// decided by the policy default that a different name would fall to.
func TestIPv4Spellings(t *testing.T) {
	allowing := mustParse(t, `version: 1
default: deny
hosts:
  - host: 1.2.3.4
    default: allow
`)
	denying := mustParse(t, `version: 1
default: allow
hosts:
  - host: 1.2.3.4
    rules:
      - { id: no-ip, action: deny }
`)
	tests := []struct {
		url      string
		host     string // the canonical host: 1.2.3.4 unless another address
		allowing string // rule that decides under the allowing policy
		denying  string
	}{
		{url: "http://1.2.3.4/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://[::ffff:1.2.3.4]/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://[::ffff:1.2.3.4]:8080/x", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://[::FFFF:0102:0304]/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://[0:0:0:0:0:ffff:1.2.3.4]/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://[::1.2.3.4]/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://[::102:304]/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://[64:ff9b::1.2.3.4]/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://[64:ff9b::102:304]/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://[2002:102:304::]/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://[2002:0102:0304:1::5]/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://16909060/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://0x01020304/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://0x1.0x2.0x3.0x4/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://01.02.03.04/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://1.2.772/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://1.131844/", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://1.2.3.4./", allowing: "hosts[0].default", denying: "no-ip"},
		{url: "http://１.２.３.４/", allowing: "hosts[0].default", denying: "no-ip"},
		// Other addresses fall to the policy default.
		{url: "http://[::ffff:1.2.3.5]/", host: "1.2.3.5", allowing: "default", denying: "default"},
		{url: "http://[64:ff9b:1::102:304]/", host: "64:ff9b:1::102:304", allowing: "default", denying: "default"},
		{url: "http://[1:2:3:4::]/", host: "1:2:3:4::", allowing: "default", denying: "default"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			r := proxyRequest(t, "GET", tt.url)
			want := tt.host
			if want == "" {
				want = "1.2.3.4"
			}
			if r.Host != want {
				t.Fatalf("host of %s = %q, want %q", tt.url, r.Host, want)
			}
			if d := allowing.Decide(r); d.RuleID != tt.allowing || (d.Decision == allowD) != (tt.allowing == "hosts[0].default") {
				t.Errorf("allowing policy: %s decided %v by %q (%s), want rule %q", tt.url, d.Decision, d.RuleID, d.Reason, tt.allowing)
			}
			if d := denying.Decide(r); d.RuleID != tt.denying || (d.Decision == denyD) != (tt.denying == "no-ip") {
				t.Errorf("denying policy: %s decided %v by %q (%s), want rule %q", tt.url, d.Decision, d.RuleID, d.Reason, tt.denying)
			}
			if got, want := allowing.CouldAllowHost(r.Host), tt.allowing != "default"; got != want {
				t.Errorf("CouldAllowHost(%q) = %v, want %v", r.Host, got, want)
			}
		})
	}
}

// TestRawSpellingsRefused checks that a spelling the proxy would have
// canonicalized, handed to Decide as is, is refused under both policies:
// the policy never canonicalizes on its own.
func TestRawSpellingsRefused(t *testing.T) {
	open := mustParse(t, "version: 1\ndefault: allow\n")
	for _, h := range []string{
		"::ffff:1.2.3.4", "[::ffff:1.2.3.4]", "::1.2.3.4", "64:ff9b::102:304", "2002:102:304::",
		"16909060", "0x1.0x2.0x3.0x4", "1.2.772", "１.２.３.４", "Example.com", "example.com.", "bücher.example",
	} {
		d := open.Decide(Request{Method: "GET", Host: h, Path: "/"})
		if d.Decision != denyD || d.RuleID != "" || !strings.Contains(d.Reason, "canonical") {
			t.Errorf("Decide(host %q) = %v %q %q, want a denial saying it is not canonical", h, d.Decision, d.RuleID, d.Reason)
		}
		if open.CouldAllowHost(h) {
			t.Errorf("CouldAllowHost(%q) = true", h)
		}
	}
}
