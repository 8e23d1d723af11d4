package decision

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/secrets"
)

const secretsPolicy = `
version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { id: products, methods: [GET], path: "/v1/products/**", action: allow }
      - { id: charges, methods: [POST], path: /v1/charges, action: allow }
      - { id: stream, methods: [GET], path: /v1/stream, websocket: true, action: allow }
  - { host: other.test, default: allow }
  - { host: maps.test, default: allow }
secrets:
  - secret: stripe
    placeholder: sk_test_
    hosts: [api.stripe.com]
    rules: [products, stream]
    header: { name: Authorization, template: "Bearer {{secret}}" }
  - { secret: maps, hosts: [maps.test], query: key }
`

// realKey is the value the store holds; it must reach nothing but a swap.
const realKey = "sk_live_REALVALUEnevershown0123456789"

func withPlaceholders(req *egressv1.DecideRequest, found ...*egressv1.FoundPlaceholder) *egressv1.DecideRequest {
	req.GetQuestion().GetHttp().Placeholders = found
	return req
}

func header(id, name, value string) *egressv1.FoundPlaceholder {
	return &egressv1.FoundPlaceholder{Id: id, Place: egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_HEADER, Name: name, Value: value}
}

// TestPlaceSecrets: a placeholder is swapped only in an allowed request to
// its bound host, by its bound rule, placed as bound; anywhere else its
// request is refused as secret misuse, and the log, the events and the
// counts say so, naming the secret, never its value.
func TestPlaceSecrets(t *testing.T) {
	store, err := secrets.Open("", []string{"SANDPIT_SECRET_STRIPE=" + realKey, "SANDPIT_SECRET_MAPS=maps-real-key"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stripe, _ := store.Lookup("", "stripe")
	maps, _ := store.Lookup("", "maps")
	ph := secrets.Placeholder("sk_test_")
	mapsPH := secrets.Placeholder("")
	id := secrets.ID(ph)
	reg := NewRegistry()
	events := make(chan *executorv1.NetworkEvent, 64)
	e := NewExecution("x1", compile(t, secretsPolicy), events)
	e.UseSecrets([]Secret{{Name: "stripe", Placeholder: ph, Value: stripe}, {Name: "maps", Placeholder: mapsPH, Value: maps}})
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	audit := NewExecution("x2", compile(t, secretsPolicy).Audited(), events)
	audit.UseSecrets([]Secret{{Name: "stripe", Placeholder: ph, Value: stripe}})
	defer reg.Register(netip.MustParseAddr("10.88.0.3"), audit)()
	s := decider(t, reg)

	bearer := header(id, "Authorization", "Bearer "+ph)
	misuse := policyv1.DenialCode_DENIAL_CODE_SECRET_MISUSE
	tests := []struct {
		name      string
		req       *egressv1.DecideRequest
		exec      *Execution
		code      policyv1.DenialCode
		swap      string // the placeholder swapped, or ""
		carried   []string
		reasonHas string
	}{
		{"bound host, rule and header", withPlaceholders(httpReq(1, "10.88.0.2", "GET", "api.stripe.com", "/v1/products/p1"), bearer), e, 0, ph, []string{"stripe"}, ""},
		{"another allowed host", withPlaceholders(httpReq(2, "10.88.0.2", "GET", "other.test", "/"), bearer), e, misuse, "", []string{"stripe"}, "may not go to other.test"},
		{"a rule it is not bound to", withPlaceholders(httpReq(3, "10.88.0.2", "POST", "api.stripe.com", "/v1/charges"), bearer), e, misuse, "", []string{"stripe"}, "rule that allowed it"},
		{"another header", withPlaceholders(httpReq(4, "10.88.0.2", "GET", "api.stripe.com", "/v1/products"), header(id, "X-Api-Key", ph)), e, misuse, "", []string{"stripe"}, "in header Authorization, not in header X-Api-Key"},
		{"more than the template", withPlaceholders(httpReq(5, "10.88.0.2", "GET", "api.stripe.com", "/v1/products"), header(id, "Authorization", "Bearer "+ph+" x")), e, misuse, "", []string{"stripe"}, "whole value"},
		{"the query", withPlaceholders(httpReq(6, "10.88.0.2", "GET", "api.stripe.com", "/v1/products"),
			&egressv1.FoundPlaceholder{Id: id, Place: egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_QUERY, Name: "key", Value: ph}), e, misuse, "", []string{"stripe"}, "not in query parameter key"},
		{"the path", withPlaceholders(httpReq(7, "10.88.0.2", "GET", "api.stripe.com", "/v1/products/"+ph),
			&egressv1.FoundPlaceholder{Id: id, Place: egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_PATH}), e, misuse, "", []string{"stripe"}, "not in the path"},
		{"one bound, one misplaced", withPlaceholders(httpReq(8, "10.88.0.2", "GET", "api.stripe.com", "/v1/products"), bearer, header(id, "X-Echo", ph)), e, misuse, "", []string{"stripe"}, "X-Echo"},
		{"a second value of the bound header", withPlaceholders(httpReq(15, "10.88.0.2", "GET", "api.stripe.com", "/v1/products"), bearer, header(id, "Authorization", ph)), e, misuse, "", []string{"stripe"}, "whole value"},
		{"a bound query parameter", withPlaceholders(httpReq(9, "10.88.0.2", "GET", "maps.test", "/geo"),
			&egressv1.FoundPlaceholder{Id: secrets.ID(mapsPH), Place: egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_QUERY, Name: "key", Value: mapsPH}), e, 0, mapsPH, []string{"maps"}, ""},
		{"a placeholder of no secret of the execution", withPlaceholders(httpReq(10, "10.88.0.2", "GET", "other.test", "/"), header("SPX"+strings.Repeat("a", 29), "Authorization", "x")), e, 0, "", nil, ""},
		{"a host denied anyway keeps its denial", withPlaceholders(httpReq(11, "10.88.0.2", "GET", "evil.test", "/"), bearer), e, policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED, "", []string{"stripe"}, ""},
		{"audit: allowed, swapped", withPlaceholders(httpReq(12, "10.88.0.3", "GET", "api.stripe.com", "/v1/products"), bearer), audit, 0, ph, []string{"stripe"}, ""},
		{"audit: a would-block is not forwarded with a secret", withPlaceholders(httpReq(13, "10.88.0.3", "GET", "api.stripe.com", "/v1/refunds"), bearer), audit, misuse, "", []string{"stripe"}, "audit mode"},
		{"a WebSocket upgrade", withPlaceholders(func() *egressv1.DecideRequest {
			r := httpReq(14, "10.88.0.2", "GET", "api.stripe.com", "/v1/stream")
			r.GetQuestion().GetHttp().Websocket = true
			return r
		}(), bearer), e, misuse, "", []string{"stripe"}, "WebSocket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := ask(t, s, tt.req)
			if resp.GetDenialCode() != tt.code {
				t.Errorf("answer %v by %q (%s), want %v", resp.GetDenialCode(), resp.GetRuleId(), resp.GetReason(), tt.code)
			}
			if !strings.Contains(resp.GetReason(), tt.reasonHas) {
				t.Errorf("reason %q, want it to say %q", resp.GetReason(), tt.reasonHas)
			}
			switch {
			case tt.swap == "" && len(resp.GetSwaps()) > 0:
				t.Errorf("swaps %d, want none", len(resp.GetSwaps()))
			case tt.swap != "" && (len(resp.GetSwaps()) != 1 || resp.GetSwaps()[0].GetPlaceholder() != tt.swap):
				t.Errorf("swaps %v, want one of %s", resp.GetSwaps(), tt.swap)
			}
			ev := <-events
			log := tt.exec.Summary().Log
			entry := log[len(log)-1]
			if !slices.Equal(ev.GetSecrets(), tt.carried) || !slices.Equal(entry.GetSecrets(), tt.carried) {
				t.Errorf("event secrets %v, log entry %v, want %v", ev.GetSecrets(), entry.GetSecrets(), tt.carried)
			}
			for _, m := range []string{prototext.Format(ev), prototext.Format(entry)} {
				if strings.Contains(m, realKey) || strings.Contains(m, "maps-real-key") {
					t.Errorf("a secret's value is in %s", m)
				}
			}
		})
	}
	if got := e.Summary(); got.WithSecrets != 2 || got.SecretMisuse != 9 {
		t.Errorf("with secrets %d, misuse %d; want 2 and 9", got.WithSecrets, got.SecretMisuse)
	}
	if got := audit.Summary(); got.WithSecrets != 1 || got.SecretMisuse != 1 {
		t.Errorf("audit: with secrets %d, misuse %d; want 1 and 1", got.WithSecrets, got.SecretMisuse)
	}
}

// FuzzPlaceSecrets: whatever request carries the placeholder, wherever,
// the executor answers a swap only for an allowed request to the bound
// host, allowed by the bound rule, with the placeholder as the whole
// templated value of the bound header; every other request carrying it is
// denied.
func FuzzPlaceSecrets(f *testing.F) {
	pol := compile(f, secretsPolicy)
	store, err := secrets.Open("", []string{"SANDPIT_SECRET_STRIPE=" + realKey}, nil)
	if err != nil {
		f.Fatal(err)
	}
	v, _ := store.Lookup("", "stripe")
	ph := secrets.Placeholder("sk_test_")
	e := NewExecution("x", pol, make(chan *executorv1.NetworkEvent))
	e.UseSecrets([]Secret{{Name: "stripe", Placeholder: ph, Value: v}})
	f.Add("GET", "api.stripe.com", "/v1/products/p1", uint8(1), "Authorization", "Bearer {}", false)
	f.Add("GET", "api.stripe.com", "/v1/products/p1", uint8(1), "authorization", "Bearer {}", false)
	f.Add("POST", "api.stripe.com", "/v1/charges", uint8(1), "Authorization", "Bearer {}", false)
	f.Add("GET", "other.test", "/", uint8(1), "Authorization", "Bearer {}", false)
	f.Add("GET", "api.stripe.com", "/v1/products", uint8(3), "key", "{}", false)
	f.Add("GET", "api.stripe.com", "/v1/stream", uint8(1), "Authorization", "Bearer {}", true)
	f.Add("GET", "api.stripe.com", "/v1/products/{}", uint8(4), "", "", false)
	f.Fuzz(func(t *testing.T, method, host, path string, place uint8, name, value string, ws bool) {
		value = strings.ReplaceAll(value, "{}", ph)
		r := &egressv1.HttpRequest{Method: method, Scheme: "https", Host: host, Port: 443, Path: strings.ReplaceAll(path, "{}", ph), Websocket: ws,
			Placeholders: []*egressv1.FoundPlaceholder{{Id: secrets.ID(ph), Place: egressv1.PlaceholderPlace(place % 5), Name: name, Value: value}}}
		before := pol.Decide(policyRequest(r))
		d, swaps, names := e.placeSecrets(r, pol, before)
		if !slices.Equal(names, []string{"stripe"}) {
			t.Fatalf("carried %v, want stripe", names)
		}
		if len(swaps) == 0 {
			if d.Forward() {
				t.Fatalf("forwarded without a swap: %+v", d)
			}
			return
		}
		bound := before.Decision == policyv1.Decision_DECISION_ALLOW && host == "api.stripe.com" && !ws &&
			(before.RuleID == "products" || before.RuleID == "stream") &&
			r.Placeholders[0].GetPlace() == egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_HEADER && strings.EqualFold(name, "Authorization") && value == "Bearer "+ph
		if !bound || !d.Forward() || len(swaps) != 1 || swaps[0].GetPlaceholder() != ph {
			t.Fatalf("swapped for %s %s%s with %v %q=%q (decided %v by %s)", method, host, r.Path, r.Placeholders[0].GetPlace(), name, value, before.Decision, before.RuleID)
		}
	})
}
