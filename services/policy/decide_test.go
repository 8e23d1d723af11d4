package policy

import (
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

const (
	allowD = policyv1.Decision_DECISION_ALLOW
	denyD  = policyv1.Decision_DECISION_DENY
	wouldD = policyv1.Decision_DECISION_WOULD_BLOCK
)

func mustParse(t testing.TB, y string) *Compiled {
	t.Helper()
	p, err := Parse([]byte(y))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return mustCompile(t, p)
}

func exampleCompiled(t testing.TB) *Compiled {
	t.Helper()
	p, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return mustCompile(t, p)
}

type decideCase struct {
	name     string
	req      Request
	decision policyv1.Decision
	rule     string
	reason   string // a substring of the reason, if set
}

func runDecide(t *testing.T, c *Compiled, tests []decideCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := c.Decide(tt.req)
			if d.Decision != tt.decision || d.RuleID != tt.rule || !strings.Contains(d.Reason, tt.reason) {
				t.Errorf("Decide(%+v) = %v %q %q\nwant %v %q ...%s...", tt.req, d.Decision, d.RuleID, d.Reason, tt.decision, tt.rule, tt.reason)
			}
			if d.Forward() != (tt.decision != denyD) {
				t.Errorf("Forward() = %v for %v", d.Forward(), d.Decision)
			}
			wantAction := policyv1.Action_ACTION_DENY
			if tt.decision == allowD {
				wantAction = policyv1.Action_ACTION_ALLOW
			}
			if d.Action != wantAction {
				t.Errorf("Action = %v, want %v", d.Action, wantAction)
			}
		})
	}
}

func TestDecideExample(t *testing.T) {
	c := exampleCompiled(t)
	runDecide(t, c, []decideCase{
		{name: "named rule", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products"}, decision: allowD, rule: "list-products", reason: "rule list-products allows GET /v1/products on api.stripe.com"},
		{name: "named rule under prefix", req: Request{Method: "POST", Host: "api.stripe.com", Path: "/v1/products/prod_1/prices"}, decision: allowD, rule: "list-products"},
		{name: "named rule trailing slash", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/"}, decision: allowD, rule: "list-products"},
		{name: "method not in rule", req: Request{Method: "DELETE", Host: "api.stripe.com", Path: "/v1/products/prod_1"}, decision: denyD, rule: "hosts[0].default", reason: "no rule of api.stripe.com matches DELETE /v1/products/prod_1"},
		{name: "deny rule with reason", req: Request{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges"}, decision: denyD, rule: "hosts[0].rules[1]", reason: "charges are not allowed"},
		{name: "lowercase method cannot slip past", req: Request{Method: "post", Host: "api.stripe.com", Path: "/v1/charges"}, decision: denyD, rule: "hosts[0].rules[1]"},
		{name: "GET charges: host default", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/charges"}, decision: denyD, rule: "hosts[0].default", reason: "no rule of api.stripe.com matches GET /v1/charges"},
		{name: "escaped path is refused, not unescaped", req: Request{Method: "POST", Host: "api.stripe.com", Path: "/v1/%63harges"}, decision: denyD, rule: "", reason: "not canonical"},
		{name: "escaped path on allow rule is refused", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/%70roducts"}, decision: denyD, rule: "", reason: "instead of its escape"},
		{name: "host allows all", req: Request{Method: "DELETE", Host: "api.github.com", Path: "/repos/x"}, decision: allowD, rule: "hosts[1].default"},
		{name: "wildcard rule without path", req: Request{Method: "HEAD", Host: "raw.githubusercontent.com", Path: "/a/b"}, decision: allowD, rule: "hosts[2].rules[0]"},
		{name: "wildcard host default", req: Request{Method: "POST", Host: "raw.githubusercontent.com", Path: "/a/b"}, decision: denyD, rule: "hosts[2].default", reason: "no rule of *.githubusercontent.com matches POST /a/b"},
		{name: "wildcard does not cover its suffix", req: Request{Method: "GET", Host: "githubusercontent.com", Path: "/"}, decision: denyD, rule: "default", reason: "host githubusercontent.com is not in the policy"},
		{name: "unknown host", req: Request{Method: "GET", Host: "example.com", Path: "/"}, decision: denyD, rule: "default", reason: "host example.com is not in the policy"},
		{name: "uppercase host is refused, not lowercased", req: Request{Method: "GET", Host: "API.STRIPE.COM.", Path: "/v1/products"}, decision: denyD, rule: "", reason: `host "API.STRIPE.COM." is "api.stripe.com" in canonical form`},
		{name: "bracketed IPv6 is refused", req: Request{Method: "GET", Host: "[::1]", Path: "/"}, decision: denyD, rule: "", reason: "not canonical"},
		{name: "websocket with websocket rule", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/stream", WebSocket: true}, decision: allowD, rule: "hosts[0].rules[2]"},
		{name: "websocket skips allow rule without websocket", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products", WebSocket: true}, decision: denyD, rule: "hosts[0].default"},
		{name: "websocket matches deny rule", req: Request{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges", WebSocket: true}, decision: denyD, rule: "hosts[0].rules[1]"},
		{name: "websocket on allow-all host", req: Request{Method: "GET", Host: "api.github.com", Path: "/", WebSocket: true}, decision: denyD, rule: "hosts[1].default", reason: "websocket: true"},
		{name: "plain request on websocket rule", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/stream"}, decision: allowD, rule: "hosts[0].rules[2]"},
		// Malformed requests are denied without consulting a rule.
		{name: "dot segments", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/../charges"}, decision: denyD, rule: "", reason: "not canonical"},
		{name: "lowercase escape", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/caf%c3%a9"}, decision: denyD, rule: "", reason: "uppercase"},
		{name: "encoded NUL", req: Request{Method: "GET", Host: "api.github.com", Path: "/a%00"}, decision: denyD, rule: "", reason: "NUL"},
		{name: "encoded slash", req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products%2F..%2Fcharges"}, decision: denyD, rule: "", reason: "encoded slash"},
		{name: "query in path", req: Request{Method: "GET", Host: "api.github.com", Path: "/x?y"}, decision: denyD, rule: "", reason: "query"},
		{name: "empty path", req: Request{Method: "GET", Host: "api.github.com"}, decision: denyD, rule: ""},
		{name: "invalid host", req: Request{Method: "GET", Host: "api..github.com", Path: "/"}, decision: denyD, rule: "", reason: "host"},
		{name: "host with port", req: Request{Method: "GET", Host: "api.github.com:443", Path: "/"}, decision: denyD, rule: "", reason: "port"},
		{name: "empty method", req: Request{Host: "api.github.com", Path: "/"}, decision: denyD, rule: "", reason: "method"},
		{name: "method with space", req: Request{Method: "GET /", Host: "api.github.com", Path: "/"}, decision: denyD, rule: "", reason: "method"},
	})
}

func TestRuleOrderFirstMatchWins(t *testing.T) {
	c := mustParse(t, `version: 1
hosts:
  - host: api.example.com
    rules:
      - { id: deny-admin, path: /admin/**, action: deny }
      - { id: allow-all, path: /**, action: allow }
      - { id: never, path: /admin/public, action: allow }
      - { id: get-only, methods: [GET], path: /items/*, action: allow }
`)
	runDecide(t, c, []decideCase{
		{name: "earlier deny beats later allows", req: Request{Method: "GET", Host: "api.example.com", Path: "/admin/public"}, decision: denyD, rule: "deny-admin"},
		{name: "prefix itself", req: Request{Method: "GET", Host: "api.example.com", Path: "/admin"}, decision: denyD, rule: "deny-admin"},
		{name: "falls to allow-all", req: Request{Method: "PUT", Host: "api.example.com", Path: "/items/1"}, decision: allowD, rule: "allow-all"},
		{name: "root", req: Request{Method: "GET", Host: "api.example.com", Path: "/"}, decision: allowD, rule: "allow-all"},
	})
}

func TestHostDefaultVersusPolicyDefault(t *testing.T) {
	c := mustParse(t, `version: 1
default: allow
hosts:
  - host: locked.example.com
    rules:
      - { methods: [GET], path: /status, action: allow }
  - host: open.example.com
    rules:
      - { methods: [DELETE], action: deny }
    default: allow
  - host: "*.internal.example.com"
    default: deny
`)
	runDecide(t, c, []decideCase{
		{name: "host default deny beats policy default allow", req: Request{Method: "GET", Host: "locked.example.com", Path: "/other"}, decision: denyD, rule: "hosts[0].default"},
		{name: "rule on locked host", req: Request{Method: "GET", Host: "locked.example.com", Path: "/status"}, decision: allowD, rule: "hosts[0].rules[0]"},
		{name: "host default allow", req: Request{Method: "POST", Host: "open.example.com", Path: "/x"}, decision: allowD, rule: "hosts[1].default"},
		{name: "deny rule on open host", req: Request{Method: "DELETE", Host: "open.example.com", Path: "/x"}, decision: denyD, rule: "hosts[1].rules[0]"},
		{name: "wildcard entry with no rules", req: Request{Method: "GET", Host: "db.internal.example.com", Path: "/"}, decision: denyD, rule: "hosts[2].default"},
		{name: "policy default allow", req: Request{Method: "GET", Host: "elsewhere.org", Path: "/"}, decision: allowD, rule: "default", reason: "whose default allows it"},
		{name: "policy default allow but websocket", req: Request{Method: "GET", Host: "elsewhere.org", Path: "/", WebSocket: true}, decision: denyD, rule: "default", reason: "websocket: true"},
	})
}

func TestAuditMode(t *testing.T) {
	c := mustParse(t, `version: 1
mode: audit
hosts:
  - host: api.example.com
    rules:
      - { id: no-delete, methods: [DELETE], action: deny, reason: "no deleting" }
      - { id: ok, methods: [GET], action: allow }
`)
	if c.Mode() != policyv1.Mode_MODE_AUDIT {
		t.Errorf("Mode() = %v, want audit", c.Mode())
	}
	runDecide(t, c, []decideCase{
		{name: "allowed stays allowed", req: Request{Method: "GET", Host: "api.example.com", Path: "/"}, decision: allowD, rule: "ok"},
		{name: "deny rule would block", req: Request{Method: "DELETE", Host: "api.example.com", Path: "/"}, decision: wouldD, rule: "no-delete", reason: "no deleting"},
		{name: "host default would block", req: Request{Method: "POST", Host: "api.example.com", Path: "/"}, decision: wouldD, rule: "hosts[0].default"},
		{name: "unknown host would block", req: Request{Method: "GET", Host: "example.org", Path: "/"}, decision: wouldD, rule: "default"},
		{name: "malformed is still denied", req: Request{Method: "GET", Host: "api.example.com", Path: "/a/../b"}, decision: denyD, rule: ""},
		{name: "non-canonical host is still denied", req: Request{Method: "GET", Host: "API.example.com", Path: "/"}, decision: denyD, rule: ""},
	})
	if !c.CouldAllowHost("anything.example.org") {
		t.Error("CouldAllowHost in audit mode = false, want true")
	}
	if c.CouldAllowHost("Anything.example.org") {
		t.Error("CouldAllowHost in audit mode of a non-canonical host = true, want false")
	}
}

func TestCouldAllowHost(t *testing.T) {
	c := mustParse(t, `version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { methods: [POST], path: /v1/charges, action: deny }
      - { path: /v1/stream, action: allow, websocket: true }
  - host: blocked.stripe.com
    rules:
      - { action: deny }
  - host: "*.stripe.com"
    default: allow
  - host: "*.cdn.example.com"
    rules:
      - { action: deny }
  - host: img.cdn.example.com
    default: allow
  - host: 10.0.0.5
    default: allow
`)
	tests := []struct {
		host string
		want bool
	}{
		{host: "api.stripe.com", want: true},
		{host: "API.Stripe.com.", want: false},
		{host: "[::ffff:10.0.0.5]", want: false},
		{host: "::ffff:10.0.0.5", want: false},
		{host: "blocked.stripe.com", want: false},
		{host: "files.stripe.com", want: true},
		{host: "a.b.stripe.com", want: true},
		{host: "stripe.com", want: false},
		{host: "x.cdn.example.com", want: false},
		{host: "img.cdn.example.com", want: true},
		{host: "example.com", want: false},
		{host: "10.0.0.5", want: true},
		{host: "10.0.0.6", want: false},
		{host: "bad..name.stripe.com", want: false},
		{host: "under_score.stripe.com", want: true},
		{host: "", want: false},
	}
	for _, tt := range tests {
		if got := c.CouldAllowHost(tt.host); got != tt.want {
			t.Errorf("CouldAllowHost(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}

	open := mustParse(t, "version: 1\ndefault: allow\nhosts:\n  - host: closed.example.com\n")
	if !open.CouldAllowHost("anything.org") {
		t.Error("CouldAllowHost under default allow = false, want true")
	}
	if open.CouldAllowHost("closed.example.com") {
		t.Error("CouldAllowHost of a host with no allow = true, want false")
	}
}

func TestDenyAll(t *testing.T) {
	c := DenyAll()
	runDecide(t, c, []decideCase{
		{name: "anything", req: Request{Method: "GET", Host: "example.com", Path: "/"}, decision: denyD, rule: "default", reason: "not in the policy"},
	})
	if c.CouldAllowHost("example.com") {
		t.Error("DenyAll().CouldAllowHost = true")
	}
	if c.Mode() != policyv1.Mode_MODE_ENFORCE || c.Limits() != (Limits{}) {
		t.Errorf("DenyAll mode %v limits %v", c.Mode(), c.Limits())
	}
}

func TestCompileDoesNotAlias(t *testing.T) {
	p := &policyv1.Policy{Hosts: []*policyv1.HostPolicy{{Host: "a.com", Rules: []*policyv1.Rule{{Methods: []string{"GET"}, Action: policyv1.Action_ACTION_ALLOW}}}}}
	c := mustCompile(t, p)
	p.Hosts[0].Rules[0].Methods[0] = "POST"
	p.Hosts[0].Rules[0].Action = policyv1.Action_ACTION_DENY
	if d := c.Decide(Request{Method: "GET", Host: "a.com", Path: "/"}); d.Decision != allowD {
		t.Errorf("changing the policy after Compile changed a decision: %v", d)
	}
}

func TestZeroCompiledDenies(t *testing.T) {
	var c Compiled
	d := c.Decide(Request{Method: "GET", Host: "example.com", Path: "/"})
	if d.Decision != denyD || d.Action != policyv1.Action_ACTION_DENY || d.RuleID != RuleDefault {
		t.Errorf("zero Compiled decided %v %v %q", d.Decision, d.Action, d.RuleID)
	}
	if c.CouldAllowHost("example.com") {
		t.Error("zero Compiled could allow a host")
	}
}

func BenchmarkDecide(b *testing.B) {
	c := Chain(exampleCompiled(b), exampleCompiled(b))
	reqs := []Request{
		{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/prod_1/prices"},
		{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges"},
		{Method: "GET", Host: "raw.githubusercontent.com", Path: "/a/b/c"},
		{Method: "GET", Host: "example.org", Path: "/"},
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.Decide(reqs[i%len(reqs)])
	}
}
