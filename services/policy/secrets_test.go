package policy

import (
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"google.golang.org/protobuf/proto"
)

const secretsYAML = `version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { id: products, methods: [GET], path: "/v1/products/**", action: allow }
      - { id: charges, methods: [POST], path: /v1/charges, action: allow }
      - { id: no-refunds, path: /v1/refunds, action: deny }
  - host: "*.github.test"
    default: allow
  - host: other.test
    default: allow
secrets:
  - secret: stripe
    placeholder: sk_test_
    hosts: [api.stripe.com]
    rules: [products]
    header: { name: Authorization, template: "Bearer {{secret}}" }
  - secret: github
    hosts: ["*.github.test"]
    basic: true
  - secret: maps
    hosts: [other.test]
    query: key
`

func TestParseSecrets(t *testing.T) {
	p, err := Parse([]byte(secretsYAML))
	if err != nil {
		t.Fatal(err)
	}
	want := []*policyv1.SecretBinding{
		{Secret: "stripe", PlaceholderPrefix: "sk_test_", Hosts: []string{"api.stripe.com"}, Rules: []string{"products"},
			Placement: &policyv1.SecretBinding_Header{Header: &policyv1.HeaderPlacement{Name: "Authorization", Template: "Bearer {{secret}}"}}},
		{Secret: "github", Hosts: []string{"*.github.test"}, Placement: &policyv1.SecretBinding_Basic{Basic: &policyv1.BasicPlacement{}}},
		{Secret: "maps", Hosts: []string{"other.test"}, Placement: &policyv1.SecretBinding_Query{Query: "key"}},
	}
	if len(p.GetSecrets()) != len(want) {
		t.Fatalf("secrets = %v", p.GetSecrets())
	}
	for i, w := range want {
		if !proto.Equal(p.GetSecrets()[i], w) {
			t.Errorf("secrets[%d] = %v, want %v", i, p.GetSecrets()[i], w)
		}
	}
	out, err := Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(out)
	if err != nil || !proto.Equal(again, p) {
		t.Errorf("round trip: %v\n%s", err, out)
	}
}

func TestSecretBindingErrors(t *testing.T) {
	base := "version: 1\nhosts:\n  - host: api.stripe.com\n    rules: [{ id: ok, action: allow }, { id: no, action: deny }]\nsecrets:\n"
	tests := []struct{ name, yaml, field, want string }{
		{"bad name", "  - { secret: Stripe!, hosts: [api.stripe.com], basic: true }\n", "secrets[0].secret", "not a secret name"},
		{"twice", "  - { secret: s, hosts: [api.stripe.com], basic: true }\n  - { secret: s, hosts: [api.stripe.com], basic: true }\n", "secrets[1].secret", "already bound"},
		{"no hosts", "  - { secret: s, basic: true }\n", "secrets[0].hosts", "at least one"},
		{"bad host", "  - { secret: s, hosts: [\"*\"], basic: true }\n", "secrets[0].hosts[0]", "bare"},
		{"unknown rule", "  - { secret: s, hosts: [api.stripe.com], rules: [nope], basic: true }\n", "secrets[0].rules[0]", "not the id"},
		{"deny rule", "  - { secret: s, hosts: [api.stripe.com], rules: [no], basic: true }\n", "secrets[0].rules[0]", "denies"},
		{"no placement", "  - { secret: s, hosts: [api.stripe.com] }\n", "secrets[0]", "header, basic or query"},
		{"host header", "  - { secret: s, hosts: [api.stripe.com], header: { name: Host } }\n", "secrets[0].header.name", "frames or routes"},
		{"template without secret", "  - { secret: s, hosts: [api.stripe.com], header: { name: X-Key, template: \"Bearer\" } }\n", "secrets[0].header.template", "exactly once"},
		{"template twice", "  - { secret: s, hosts: [api.stripe.com], header: { name: X-Key, template: \"{{secret}}{{secret}}\" } }\n", "secrets[0].header.template", "exactly once"},
		{"bad query", "  - { secret: s, hosts: [api.stripe.com], query: \"a&b\" }\n", "secrets[0].query", "not a query parameter"},
		{"bad prefix", "  - { secret: s, placeholder: \"sk test\", hosts: [api.stripe.com], basic: true }\n", "secrets[0].placeholder_prefix", "letters, digits"},
		{"basic false", "  - { secret: s, hosts: [api.stripe.com], basic: false }\n", "secrets[0].basic", "must be true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(base + tt.yaml))
			if err == nil {
				_, err = Compile(p)
			}
			if err == nil || !strings.Contains(err.Error(), tt.field) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %s: %s", err, tt.field, tt.want)
			}
		})
	}
}

// TestSecretFits: a secret goes only in an allowed request, to a bound host,
// allowed by a bound rule when the binding names rules, where the binding
// puts it; in a chain the binding's rules are its own policy's.
func TestSecretFits(t *testing.T) {
	op := mustParse(t, secretsYAML)
	stripe, ok := op.SecretBinding("stripe")
	if !ok || stripe.PlaceholderPrefix != "sk_test_" || stripe.Placement.Render("sk_live_x") != "Bearer sk_live_x" {
		t.Fatalf("stripe binding: %+v %v", stripe, ok)
	}
	github, _ := op.SecretBinding("github")
	maps, _ := op.SecretBinding("maps")
	auth := Placement{Kind: PlaceHeader, Name: "authorization"}
	tests := []struct {
		name  string
		b     Binding
		chain *Compiled
		req   Request
		where Placement
		want  bool
	}{
		{"bound rule, host and header", stripe, op, Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/p1"}, auth, true},
		{"allowed, but not by a bound rule", stripe, op, Request{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges"}, auth, false},
		{"denied request", stripe, op, Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/refunds"}, auth, false},
		{"another header", stripe, op, Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/p1"}, Placement{Kind: PlaceHeader, Name: "X-Api-Key"}, false},
		{"the query instead of the header", stripe, op, Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/p1"}, Placement{Kind: PlaceQuery, Name: "key"}, false},
		{"another allowed host", stripe, op, Request{Method: "GET", Host: "other.test", Path: "/"}, auth, false},
		{"basic to a wildcard host", github, op, Request{Method: "GET", Host: "api.github.test", Path: "/x"}, Placement{Kind: PlaceBasic}, true},
		{"basic to the wildcard's own suffix", github, op, Request{Method: "GET", Host: "github.test", Path: "/x"}, Placement{Kind: PlaceBasic}, false},
		{"query param", maps, op, Request{Method: "GET", Host: "other.test", Path: "/"}, Placement{Kind: PlaceQuery, Name: "key"}, true},
		{"another query param", maps, op, Request{Method: "GET", Host: "other.test", Path: "/"}, Placement{Kind: PlaceQuery, Name: "k"}, false},
		{"audited denial is not allowed", stripe, Chain(op, mustParse(t, "version: 1\nmode: audit\n")),
			Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/p1"}, auth, false},
		{"narrowed by an inline policy that allows", stripe, Chain(op, mustParse(t, "version: 1\ndefault: allow\n")),
			Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/p1"}, auth, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := tt.chain.SecretBinding(tt.b.Secret)
			d := tt.chain.Decide(tt.req)
			if got := b.SecretFits(tt.req, d, tt.where); got != tt.want {
				t.Errorf("SecretFits = %v (decision %v by %s), want %v", got, d.Decision, d.RuleID, tt.want)
			}
		})
	}
	if _, ok := op.SecretBinding("openai"); ok {
		t.Error("an unbound secret has a binding")
	}
	if !op.HasSecrets() || DenyAll().HasSecrets() {
		t.Error("HasSecrets")
	}
	// A binding's rules are its own policy's: a narrower policy's rule of
	// the same id does not satisfy them.
	lower := Chain(mustParse(t, "version: 1\ndefault: allow\n"), op)
	b, _ := lower.SecretBinding("stripe")
	req := Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products/p1"}
	if !b.SecretFits(req, lower.Decide(req), auth) {
		t.Error("the binding of the chain's second policy does not see its own rule")
	}
}

// TestSecretNotOnPassthrough: a binding may not name a host, or a pattern
// overlapping one, that the same policy passes through.
func TestSecretNotOnPassthrough(t *testing.T) {
	base := "version: 1\nhosts:\n  - { host: pinned.test, passthrough: true }\n  - { host: \"*.spliced.test\", passthrough: true }\n  - { host: api.test, default: allow }\nsecrets:\n"
	for _, host := range []string{"pinned.test", "a.spliced.test", "\"*.spliced.test\"", "\"*.b.spliced.test\""} {
		p, err := Parse([]byte(base + "  - { secret: s, hosts: [" + host + "], basic: true }\n"))
		if err == nil {
			_, err = Compile(p)
		}
		if err == nil || !strings.Contains(err.Error(), "secrets[0].hosts[0]") || !strings.Contains(err.Error(), "passed through") {
			t.Errorf("%s: err = %v, want a pass-through overlap", host, err)
		}
	}
	for _, host := range []string{"api.test", "spliced.test", "\"*.api.test\"", "\"*.pinned.test\""} {
		p, err := Parse([]byte(base + "  - { secret: s, hosts: [" + host + "], basic: true }\n"))
		if err == nil {
			_, err = Compile(p)
		}
		if err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
}
