package policy

import (
	"os"
	"reflect"
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"google.golang.org/protobuf/proto"

	"github.com/sandpit-run/sandpit/services/policy/canon"
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
		{"POST", "api.stripe.com", "/v1/charges", false},
		{"GET", "::ffff:10.0.0.5", "/", false},
		{"GET", "[::ffff:10.0.0.5]", "/", false},
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
		if !reflect.DeepEqual(d, c.Decide(r)) {
			t.Fatal("Decide is not deterministic")
		}
		if cd := chained.Decide(r); cd.Action != d.Action || cd.RuleID != d.RuleID {
			t.Fatalf("Chain(c, c) decided %v %q, c alone %v %q", cd.Action, cd.RuleID, d.Action, d.RuleID)
		}
		allowed := d.Action == policyv1.Action_ACTION_ALLOW
		if allowed != (d.Decision == policyv1.Decision_DECISION_ALLOW) || d.Decision == policyv1.Decision_DECISION_WOULD_BLOCK {
			t.Fatalf("enforce mode: action %v but decision %v", d.Action, d.Decision)
		}

		herr := canon.CheckHost(host)
		perr := canon.CheckPath(path)
		if np, _, err := canon.CanonicalTarget(path); err == nil && perr == nil && np != path {
			t.Fatalf("CheckPath accepts %q, which canonicalizes to %q", path, np)
		}
		if perr == nil && len(path) <= maxPathPatternLen && !strings.Contains(path, "*") {
			// A canonical path is one a rule can name exactly.
			if pp, err := parsePathPattern(path); err != nil || !pp.match(path) {
				t.Fatalf("canonical path %q is not a pattern matching itself: %v", path, err)
			}
		}
		if (d.Code == policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED) != allowed {
			t.Fatalf("action %v with denial code %v", d.Action, d.Code)
		}
		if !allowed {
			return
		}
		// Everything below holds for allowed requests only.
		if herr != nil {
			t.Fatalf("allowed a request to non-canonical host %q: %v", host, herr)
		}
		if perr != nil {
			t.Fatalf("allowed a request with non-canonical path %q: %v", path, perr)
		}
		h, p := host, path
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
		roundTrip(t, p)
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

// FuzzCanonicalFixedPoint is the differential between the proxy and the
// policy: whatever authority and request target the proxy canonicalizes
// (canon.SplitHostPort, canon.CanonicalTarget), the host and path it would
// ask about are fixed points of canonicalization, the policy's checks
// accept them, a policy naming exactly that host and path compiles, and
// its rule decides the request.
func FuzzCanonicalFixedPoint(f *testing.F) {
	seeds := []struct{ authority, target string }{
		{"api.stripe.com", "/v1/products"},
		{"API.Stripe.COM.:443", "/v1//products/./x/../y?limit=3"},
		{"[::ffff:1.2.3.4]", "/"},
		{"[::ffff:0102:0304]:8080", "/a%2e/b"},
		{"[::1.2.3.4]", "/%7Euser"},
		{"[64:ff9b::1.2.3.4]", "/caf%c3%a9"},
		{"[2002:102:304::1]", "/a b/{c}"},
		{"[64:ff9b:1::102:304]", "/"},
		{"[2001:DB8::0001]:443", "/x;y=1/:@!$&'()*+,="},
		{"[::]", "/"},
		{"[::1]", "/.."},
		{"0x7f.1", "/%2e%2e/"},
		{"2130706433", "/"},
		{"0177.0.0.1:80", "/"},
		{"１２７．０．０．１", "/"},
		{"bücher.example", "/é"},
		{"xn--bcher-kva.example", "/"},
		{"r3---sn-abc.googlevideo.com", "/videoplayback"},
		{"My_Bucket.s3.amazonaws.com", "/key"},
		{"faß.de", "/"},
		{"a.b.c.d.e.f.g", "/%25"},
	}
	for _, s := range seeds {
		f.Add(s.authority, s.target)
	}
	f.Fuzz(func(t *testing.T, authority, target string) {
		h, _, herr := canon.SplitHostPort(authority)
		path, query, perr := canon.CanonicalTarget(target)
		if herr == nil {
			if err := canon.CheckHost(h.Name); err != nil {
				t.Fatalf("%q: the proxy asks about host %q, which the policy refuses: %v", authority, h.Name, err)
			}
			if again, err := canon.CanonicalHost(h.Name); err != nil || again != h {
				t.Fatalf("%q: host %+v is not a fixed point: %+v, %v", authority, h, again, err)
			}
			pat, err := parseHostPattern(h.Name)
			if err != nil || pat.name != h.Name || pat.wildcard {
				t.Fatalf("%q: host %q as a policy pattern: %v, %v", authority, h.Name, pat, err)
			}
		}
		if perr == nil {
			if err := canon.CheckPath(path); err != nil {
				t.Fatalf("%q: the proxy asks about path %q, which the policy refuses: %v", target, path, err)
			}
			if again, q, err := canon.CanonicalTarget(path + "?" + query); err != nil || again != path || q != query {
				t.Fatalf("%q: path %q is not a fixed point: %q?%q, %v", target, path, again, q, err)
			}
		}
		if herr != nil || perr != nil || len(path) > maxPathPatternLen || strings.Contains(path, "*") {
			return
		}
		c, err := Compile(&policyv1.Policy{
			DefaultAction: policyv1.Action_ACTION_DENY,
			Hosts: []*policyv1.HostPolicy{{
				Host:  h.Name,
				Rules: []*policyv1.Rule{{Id: "this", Path: path, Action: policyv1.Action_ACTION_ALLOW}},
			}},
		})
		if err != nil {
			t.Fatalf("a policy naming host %q and path %q does not compile: %v", h.Name, path, err)
		}
		if d := c.Decide(Request{Method: "GET", Host: h.Name, Path: path}); d.Decision != policyv1.Decision_DECISION_ALLOW || d.RuleID != "this" {
			t.Fatalf("GET %s%s decided %v by %q (%s), want allowed by its own rule", h.Name, path, d.Decision, d.RuleID, d.Reason)
		}
	})
}

// roundTrip marshals p and parses it back, failing unless the same policy
// comes back; it returns what Marshal wrote.
func roundTrip(t testing.TB, p *policyv1.Policy) []byte {
	t.Helper()
	out, err := Marshal(p)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	back, err := Parse(out)
	if err != nil {
		t.Fatalf("Parse(Marshal(p)): %v\n%s", err, out)
	}
	if !proto.Equal(p, back) {
		t.Fatalf("round trip changed the policy:\n%s\ngot  %v\nwant %v", out, back, p)
	}
	return out
}
