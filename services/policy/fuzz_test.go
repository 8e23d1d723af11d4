package policy

import (
	"os"
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"google.golang.org/protobuf/proto"
)

const fuzzPolicyYAML = `version: 1
default: deny
hosts:
  - host: api.stripe.com
    rules:
      - { id: no-charges, methods: [POST], path: /v1/charges, action: deny }
      - { id: products, path: /v1/products/**, action: allow }
      - { id: customer, methods: [GET], path: /v1/customers/*, action: allow }
      - { id: stream, methods: [GET], path: /v1/stream, action: allow, websocket: true }
  - host: "*.example.com"
    rules:
      - { id: no-admin, path: /admin/**, action: deny }
    default: allow
  - host: api.github.com
    default: allow
  - host: 10.0.0.5
    default: allow
`

// FuzzDecide checks invariants of one fixed policy over arbitrary requests.
func FuzzDecide(f *testing.F) {
	c := mustParse(f, fuzzPolicyYAML)
	seeds := []struct {
		method, host, path string
		ws                 bool
	}{
		{"GET", "api.stripe.com", "/v1/products", false},
		{"post", "API.STRIPE.COM.", "/v1/%63harges", false},
		{"GET", "example.com", "/", false},
		{"GET", "a.example.com", "/admin", false},
		{"GET", "a.b.example.com", "/x/../admin", false},
		{"GET", "badexample.com", "/", false},
		{"GET", "ｅｘａｍｐｌｅ.com", "/", false},
		{"GET", "x.ｅｘａｍｐｌｅ.com", "/Admin", false},
		{"GET", "bücher.example.com", "/", true},
		{"GET", "api.stripe.com", "/v1/stream", true},
		{"GET", "10.0.0.5", "/", false},
		{"GET", "010.0.0.5", "/", false},
		{"GET", "api.stripe.com", "/v1/customers/%2F", false},
	}
	for _, s := range seeds {
		f.Add(s.method, s.host, s.path, s.ws)
	}
	chained := Chain(c, c)
	f.Fuzz(func(t *testing.T, method, host, path string, ws bool) {
		r := Request{Method: method, Host: host, Path: path, WebSocket: ws}
		d := c.Decide(r)
		if d != c.Decide(r) {
			t.Fatal("Decide is not deterministic")
		}
		if cd := chained.Decide(r); cd.Action != d.Action || cd.RuleID != d.RuleID {
			t.Fatalf("Chain(c, c) decided %v %q, c alone %v %q", cd.Action, cd.RuleID, d.Action, d.RuleID)
		}
		allowed := d.Action == policyv1.Action_ACTION_ALLOW
		if allowed != (d.Decision == policyv1.Decision_DECISION_ALLOW) || d.Decision == policyv1.Decision_DECISION_WOULD_BLOCK {
			t.Fatalf("enforce mode: action %v but decision %v", d.Action, d.Decision)
		}

		h, herr := CanonicalHost(host)
		if herr == nil {
			if again, err := CanonicalHost(h); err != nil || again != h {
				t.Fatalf("CanonicalHost is not idempotent: %q -> %q -> %q, %v", host, h, again, err)
			}
		}
		if isCanonicalHost(host) {
			if slow, err := canonicalHostSlow(host); err != nil || slow != host {
				t.Fatalf("fast path accepted %q, slow path gives %q, %v", host, slow, err)
			}
		}
		if np, err := normalizePath(path); err == nil {
			if again, err := normalizePath(np); err != nil || again != np {
				t.Fatalf("normalizePath is not idempotent: %q -> %q -> %q, %v", path, np, again, err)
			}
			// A normalized path is one a rule can name exactly.
			if pp, err := parsePathPattern(np); len(np) <= maxPathPatternLen && !strings.Contains(np, "*") && (err != nil || !pp.match(np)) {
				t.Fatalf("normalized path %q is not a pattern matching itself: %v", np, err)
			}
		}
		if !allowed {
			return
		}
		// Everything below holds for allowed requests only.
		if herr != nil {
			t.Fatalf("allowed a request to invalid host %q", host)
		}
		p, err := normalizePath(path)
		if err != nil {
			t.Fatalf("allowed a request with path %q: %v", path, err)
		}
		m := strings.ToUpper(method)
		covered := h == "api.stripe.com" || h == "api.github.com" || h == "10.0.0.5" ||
			strings.HasSuffix(h, ".example.com")
		if !covered {
			t.Fatalf("allowed host %q (from %q), which no entry names, under default deny", h, host)
		}
		if h == "example.com" {
			t.Fatal("*.example.com allowed example.com itself")
		}
		if h == "api.stripe.com" && m == "POST" && p == "/v1/charges" {
			t.Fatalf("allowed POST /v1/charges (from %q %q)", method, path)
		}
		if strings.HasSuffix(h, ".example.com") && (p == "/admin" || strings.HasPrefix(p, "/admin/")) {
			t.Fatalf("allowed %s%s past the no-admin rule (from %q %q)", h, p, host, path)
		}
		if ws && d.RuleID != "stream" {
			t.Fatalf("allowed a WebSocket upgrade by %q, which does not allow upgrades", d.RuleID)
		}
		if !c.CouldAllowHost(host) {
			t.Fatalf("allowed a request to %q but CouldAllowHost says no", host)
		}
		canon := c.Decide(Request{Method: m, Host: h, Path: p, WebSocket: ws})
		if canon.Action != d.Action || canon.RuleID != d.RuleID {
			t.Fatalf("canonical request decided %v %q, raw one %v %q", canon.Action, canon.RuleID, d.Action, d.RuleID)
		}
	})
}

// FuzzParse checks that Parse never panics, that what it accepts compiles
// and survives a Marshal round trip.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"testdata/example.yaml"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{fuzzPolicyYAML, operatorYAML, claimsYAML, inlineYAML, "version: 1\n", "version: 1\nhosts: [{host: '*.a.b', rules: [{action: allow, path: '/x/*/**'}]}]\n", "{", "version: 1\nlimits: {max_request_bytes: 1GiB}\n",
		"version: 1\nhosts:\n  - host: \"*.Bücher.example.\"\n    rules:\n      - {id: '123', path: '/a:b/%7Bx%7D,(y)', action: deny, reason: 'null: \"x\" #y'}\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		c, err := Compile(p)
		if err != nil {
			t.Fatalf("Parse accepted a policy Compile refuses: %v", err)
		}
		c.Decide(Request{Method: "GET", Host: "api.example.com", Path: "/"})
		out, err := Marshal(p)
		if err != nil {
			t.Fatalf("Marshal of a parsed policy: %v", err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal(p)): %v\n%s", err, out)
		}
		if !proto.Equal(p, back) {
			t.Fatalf("round trip changed the policy:\n%s\ngot  %v\nwant %v", out, back, p)
		}
	})
}

// FuzzValidateProto feeds Validate the binary form inline policies arrive
// in: whatever it accepts must compile and decide without panicking.
func FuzzValidateProto(f *testing.F) {
	for _, y := range []string{fuzzPolicyYAML, operatorYAML, inlineYAML} {
		p, err := Parse([]byte(y))
		if err != nil {
			f.Fatal(err)
		}
		b, err := proto.Marshal(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "GET", "api.stripe.com", "/v1/products")
	}
	f.Fuzz(func(t *testing.T, data []byte, method, host, path string) {
		p := &policyv1.Policy{}
		if proto.Unmarshal(data, p) != nil {
			return
		}
		if Validate(p) != nil {
			return
		}
		c, err := Compile(p)
		if err != nil {
			t.Fatalf("Validate accepted a policy Compile refuses: %v", err)
		}
		d := c.Decide(Request{Method: method, Host: host, Path: path})
		if d.Action == policyv1.Action_ACTION_ALLOW && !c.CouldAllowHost(host) {
			t.Fatalf("allowed a request to %q but CouldAllowHost says no", host)
		}
		if _, err := Marshal(p); err != nil {
			t.Fatalf("Marshal of a valid policy: %v", err)
		}
	})
}
