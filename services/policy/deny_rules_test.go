package policy

import (
	"errors"
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// denyInAllowingHost is the policy a deny rule has to hold in: the host
// allows by default, so a variant the rule misses is forwarded.
const denyInAllowingHost = `
version: 1
hosts:
  - host: api.example.com
    rules:
      - { id: no-charges, methods: [POST], path: /v1/charges, action: deny }
      - { id: no-refunds-dir, path: /v1/refunds/, action: deny }
      - { id: no-customer, methods: [DELETE], path: /v1/customers/*, action: deny }
      - { id: exact-allow, methods: [GET], path: /v1/Products, action: allow }
    default: allow
`

func TestDenyRuleVariants(t *testing.T) {
	c := mustParse(t, denyInAllowingHost)
	post := func(path string) Request { return Request{Method: "POST", Host: "api.example.com", Path: path} }
	runDecide(t, c, []decideCase{
		{"exact", post("/v1/charges"), denyD, "no-charges", ""},
		{"trailing slash", post("/v1/charges/"), denyD, "no-charges", ""},
		{"upper case first segment", post("/V1/charges"), denyD, "no-charges", ""},
		{"upper case everything", post("/V1/CHARGES"), denyD, "no-charges", ""},
		{"semicolon parameter", post("/v1/charges;x=1"), denyD, "hosts[0].path", `has a ";"`},
		{"semicolon in earlier segment", post("/v1;x=1/charges"), denyD, "hosts[0].path", `has a ";"`},
		{"escaped trailing space", post("/v1/charges%20"), denyD, "no-charges", ""},
		{"escaped trailing spaces and slash", post("/v1/charges%20%20/"), denyD, "no-charges", ""},
		{"escaped trailing tab", post("/v1/charges%09"), denyD, "no-charges", ""},
		{"mixed", post("/V1%20/Charges%20/"), denyD, "no-charges", ""},
		// Neighbours the rule must not swallow.
		{"longer segment", post("/v1/chargesx"), allowD, "hosts[0].default", ""},
		{"sub path", post("/v1/charges/ch_1"), allowD, "hosts[0].default", ""},
		{"inner space", post("/v1/char%20ges"), allowD, "hosts[0].default", ""},
		{"other method", Request{Method: "GET", Host: "api.example.com", Path: "/v1/charges/"}, allowD, "hosts[0].default", ""},
		// A pattern with a trailing slash denies the path without it too.
		{"pattern slash, request slash", post("/v1/refunds/"), denyD, "no-refunds-dir", ""},
		{"pattern slash, request none", post("/v1/refunds"), denyD, "no-refunds-dir", ""},
		{"pattern slash, upper case", post("/V1/REFUNDS"), denyD, "no-refunds-dir", ""},
		// Wildcards keep matching exactly one non-empty segment.
		{"star exact", Request{Method: "DELETE", Host: "api.example.com", Path: "/v1/customers/cus_1"}, denyD, "no-customer", ""},
		{"star slash case", Request{Method: "DELETE", Host: "api.example.com", Path: "/V1/Customers/cus_1/"}, denyD, "no-customer", ""},
		{"star empty", Request{Method: "DELETE", Host: "api.example.com", Path: "/v1/customers/"}, allowD, "hosts[0].default", ""},
	})
}

// Allow rules stay exact: a variant of an allowed path falls to the next
// rule or the default, which is never more access than the exact path had.
func TestAllowRulesStayExact(t *testing.T) {
	c := mustParse(t, `
version: 1
hosts:
  - host: api.example.com
    rules:
      - { id: products, methods: [GET], path: /v1/Products, action: allow }
      - { id: list, methods: [GET], path: /v1/items/**, action: allow }
`)
	get := func(path string) Request { return Request{Method: "GET", Host: "api.example.com", Path: path} }
	runDecide(t, c, []decideCase{
		{"exact", get("/v1/Products"), allowD, "products", ""},
		{"other case", get("/v1/products"), denyD, "hosts[0].default", ""},
		{"trailing slash", get("/v1/Products/"), denyD, "hosts[0].default", ""},
		{"trailing space", get("/v1/Products%20"), denyD, "hosts[0].default", ""},
		{"semicolon", get("/v1/Products;x=1"), denyD, "hosts[0].path", `has a ";"`},
		{"prefix", get("/v1/items/a/b"), allowD, "list", ""},
		{"prefix other case", get("/V1/items/a"), denyD, "hosts[0].default", ""},
		{"prefix semicolon", get("/v1/items/a;jsessionid=1"), denyD, "hosts[0].path", ""},
	})
}

func TestSemicolonNamedByARule(t *testing.T) {
	c := mustParse(t, `
version: 1
hosts:
  - host: matrix.example.com
    rules:
      - { id: matrix, methods: [GET], path: "/map;zoom=3", action: allow }
      - { id: no-charges, methods: [POST], path: /v1/charges, action: deny }
    default: allow
  - host: other.example.com
    default: allow
`)
	runDecide(t, c, []decideCase{
		{"named", Request{Method: "GET", Host: "matrix.example.com", Path: "/map;zoom=3"}, allowD, "matrix", ""},
		{"other semicolon path on the same host", Request{Method: "GET", Host: "matrix.example.com", Path: "/x;y"}, allowD, "hosts[0].default", ""},
		{"host without one", Request{Method: "GET", Host: "other.example.com", Path: "/x;y"}, denyD, "hosts[1].path", ""},
		// A host not in the policy has no deny rule to bypass; the policy
		// default decides.
		{"host not in the policy", Request{Method: "GET", Host: "none.example.org", Path: "/x;y"}, denyD, "default", ""},
	})
}

func TestPortsAndSchemes(t *testing.T) {
	c := mustParse(t, `
version: 1
default: allow
hosts:
  - host: api.example.com
    default: allow
  - host: alt.example.com
    ports: [8443, 443]
    default: allow
  - host: plain.example.com
    schemes: [http, https]
    default: allow
  - host: plainalt.example.com
    schemes: [http]
    ports: [8080]
    default: allow
  - host: "*.wild.example.com"
    default: allow
`)
	req := func(host, scheme string, port uint32) Request {
		return Request{Method: "GET", Host: host, Path: "/", Scheme: scheme, Port: port}
	}
	runDecide(t, c, []decideCase{
		{"https 443", req("api.example.com", "https", 443), allowD, "hosts[0].default", ""},
		{"defaults are https 443", req("api.example.com", "", 0), allowD, "hosts[0].default", ""},
		{"https 8443 not named", req("api.example.com", "https", 8443), denyD, "hosts[0].ports", "not 8443"},
		{"http not named", req("api.example.com", "http", 80), denyD, "hosts[0].schemes", "not http"},
		{"http on 443 not named", req("api.example.com", "http", 443), denyD, "hosts[0].schemes", ""},
		{"named 8443", req("alt.example.com", "https", 8443), allowD, "hosts[1].default", ""},
		{"named 443", req("alt.example.com", "https", 443), allowD, "hosts[1].default", ""},
		{"not named 9443", req("alt.example.com", "https", 9443), denyD, "hosts[1].ports", ""},
		{"http default port", req("plain.example.com", "http", 80), allowD, "hosts[2].default", ""},
		{"https default port", req("plain.example.com", "https", 443), allowD, "hosts[2].default", ""},
		{"http on https port", req("plain.example.com", "http", 443), denyD, "hosts[2].ports", ""},
		{"http named port", req("plainalt.example.com", "http", 8080), allowD, "hosts[3].default", ""},
		{"http port 80 not named", req("plainalt.example.com", "http", 80), denyD, "hosts[3].ports", ""},
		{"https not named", req("plainalt.example.com", "https", 8080), denyD, "hosts[3].schemes", ""},
		{"wildcard other port", req("a.wild.example.com", "https", 8443), denyD, "hosts[4].ports", ""},
		{"bad scheme", req("api.example.com", "ftp", 21), denyD, "", "not http or https"},
		{"bad port", req("api.example.com", "https", 70000), denyD, "", "not in 1-65535"},
		// The policy default for hosts no entry names is not narrowed by
		// port: an operator who allows every host allows every port.
		{"unnamed host", req("other.example.org", "https", 8443), allowD, "default", ""},
	})
}

// A narrower policy's ports only remove access: both layers must allow the
// port.
func TestChainPorts(t *testing.T) {
	base := mustParse(t, `
version: 1
hosts:
  - { host: api.example.com, ports: [443, 8443], default: allow }
`)
	inlineWider := mustParse(t, `
version: 1
hosts:
  - { host: api.example.com, ports: [443, 8443, 9443], default: allow }
`)
	inlineDefault := mustParse(t, `
version: 1
hosts:
  - { host: api.example.com, default: allow }
`)
	req := func(port uint32) Request {
		return Request{Method: "GET", Host: "api.example.com", Path: "/", Port: port}
	}
	runDecide(t, Chain(base, inlineWider), []decideCase{
		{"9443 named only by the narrower", req(9443), denyD, "hosts[0].ports", ""},
		{"8443 named by both", req(8443), allowD, "hosts[0].default", ""},
	})
	runDecide(t, Chain(base, inlineDefault), []decideCase{
		{"8443 removed by the narrower", req(8443), denyD, "hosts[0].ports", ""},
		{"443", req(443), allowD, "hosts[0].default", ""},
	})
	if d := Chain(base, inlineDefault).Decide(req(8443)); d.Layer != 1 {
		t.Errorf("8443 denied by layer %d, want 1 (the narrower)", d.Layer)
	}
}

func TestPortsAndSchemesValidation(t *testing.T) {
	tests := []struct {
		name, yaml, field, reason string
	}{
		{"port zero", `{ host: a.example.com, ports: [0] }`, "hosts[0].ports[0]", "not in 1-65535"},
		{"port too big", `{ host: a.example.com, ports: [65536] }`, "hosts[0].ports[0]", "not in 1-65535"},
		{"port twice", `{ host: a.example.com, ports: [443, 443] }`, "hosts[0].ports[1]", "listed twice"},
		{"port not a number", `{ host: a.example.com, ports: [https] }`, "hosts[0].ports[0]", ""},
		{"ports not a list", `{ host: a.example.com, ports: 443 }`, "hosts[0].ports", "a list"},
		{"too many ports", `{ host: a.example.com, ports: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17] }`, "hosts[0].ports", "at most 16"},
		{"scheme unknown", `{ host: a.example.com, schemes: [ftp] }`, "hosts[0].schemes[0]", "https or http"},
		{"scheme uppercase", `{ host: a.example.com, schemes: [HTTPS] }`, "hosts[0].schemes[0]", "lowercase"},
		{"scheme twice", `{ host: a.example.com, schemes: [http, http] }`, "hosts[0].schemes[1]", "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte("version: 1\nhosts:\n  - " + tt.yaml + "\n"))
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("Parse = %v, want Errors", err)
			}
			if es[0].Field != tt.field || !strings.Contains(es[0].Reason, tt.reason) {
				t.Errorf("first error %q: %q, want %q ...%s...", es[0].Field, es[0].Reason, tt.field, tt.reason)
			}
		})
	}
}

func TestPortsAndSchemesRoundTrip(t *testing.T) {
	in := "version: 1\nhosts:\n  - host: a.example.com\n    schemes: [http, https]\n    ports: [80, 8443]\n    default: allow\n"
	p, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.GetHosts()[0]; len(got.GetSchemes()) != 2 || len(got.GetPorts()) != 2 || got.GetPorts()[1] != 8443 {
		t.Fatalf("parsed %v", got)
	}
	out, err := Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	q, err := Parse(out)
	if err != nil {
		t.Fatalf("Parse(Marshal) = %v\n%s", err, out)
	}
	if !equalPolicies(p, q) {
		t.Errorf("round trip changed the policy:\n%s", out)
	}
}

func equalPolicies(a, b *policyv1.Policy) bool {
	x, err1 := Marshal(a)
	y, err2 := Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// FuzzDenyRuleVariants checks that no canonical path the proxy could send
// that servers commonly route to POST /v1/charges gets past the deny rule,
// and that no port but 443 and no scheme but https reach a host that names
// none.
func FuzzDenyRuleVariants(f *testing.F) {
	c := mustParse(f, denyInAllowingHost)
	for _, s := range []string{"/v1/charges", "/v1/charges/", "/V1/charges", "/v1/charges;x=1", "/v1/charges%20", "/v1/charges%09/", "/v1//charges", "/v1/charges/."} {
		f.Add("POST", s, "https", uint32(443))
	}
	f.Add("POST", "/", "https", uint32(8443))
	f.Add("GET", "/", "http", uint32(80))
	f.Fuzz(func(t *testing.T, method, path, scheme string, port uint32) {
		d := c.Decide(Request{Method: method, Host: "api.example.com", Path: path, Scheme: scheme, Port: port})
		if d.Action != policyv1.Action_ACTION_ALLOW {
			return
		}
		if canon.CheckPath(path) != nil {
			t.Fatalf("allowed non-canonical path %q", path)
		}
		if strings.Contains(path, ";") {
			t.Fatalf("allowed %q, which has a ';' no rule names", path)
		}
		if s, p, _ := canonicalEndpoint(scheme, port); s != SchemeHTTPS || p != 443 {
			t.Fatalf("allowed %s on port %d (from %q %d)", s, p, scheme, port)
		}
		if strings.EqualFold(method, "POST") {
			trimmed := strings.TrimRight(strings.ToLower(path), "/")
			for {
				t2 := strings.TrimSuffix(strings.TrimSuffix(trimmed, "%20"), "%09")
				t2 = strings.TrimRight(t2, "/")
				if t2 == trimmed {
					break
				}
				trimmed = t2
			}
			if trimmed == "/v1/charges" {
				t.Fatalf("allowed POST %q past the deny rule", path)
			}
		}
	})
}

// In audit mode the ';', port and scheme checks are decisions like any
// rule's: would-block, forwarded and reported.
func TestVariantChecksInAudit(t *testing.T) {
	c := mustParse(t, "version: 1\nmode: audit\nhosts:\n  - { host: api.example.com, default: allow }\n")
	runDecide(t, c, []decideCase{
		{"semicolon", Request{Method: "GET", Host: "api.example.com", Path: "/a;b"}, wouldD, "hosts[0].path", ""},
		{"port", Request{Method: "GET", Host: "api.example.com", Path: "/", Port: 8443}, wouldD, "hosts[0].ports", ""},
		{"scheme", Request{Method: "GET", Host: "api.example.com", Path: "/", Scheme: "http"}, wouldD, "hosts[0].schemes", ""},
	})
}
