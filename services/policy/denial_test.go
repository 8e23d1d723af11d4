package policy

import (
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// denialPolicyYAML has a rule, a deny rule, a WebSocket rule and a
// host with ports for each code decide gives.
const denialPolicyYAML = `
version: 1
default: deny
hosts:
  - host: api.stripe.com
    rules:
      - { id: list-products, methods: [GET], path: "/v1/products/**", action: allow }
      - { id: no-charges, methods: [POST], path: /v1/charges, action: deny }
      - { id: events, methods: [GET], path: /v1/events, action: allow }
    default: deny
  - host: ws.test
    rules:
      - { id: stream, methods: [GET], path: /stream, action: allow, websocket: true }
      - { id: poll, methods: [GET], path: /poll, action: allow }
    default: deny
  - host: open.test
    schemes: [https, http]
    ports: [443, 8080]
    default: allow
`

func TestDenialCodes(t *testing.T) {
	c := mustParse(t, denialPolicyYAML)
	claims, err := Claims([]string{"api.stripe.com"}, []string{"events"})
	if err != nil {
		t.Fatal(err)
	}
	token := Chain(c, claims)
	// The package's own short names, and the two it has none for.
	const (
		none      = policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED
		host      = codeHost
		method    = codeMethod
		path      = codePath
		port      = codePort
		websocket = codeWebSocket
		ruleD     = policyv1.DenialCode_DENIAL_CODE_RULE_DENIED
		ambiguous = codeAmbiguous
		tokenD    = codeToken
	)
	tests := []struct {
		name string
		c    *Compiled
		req  Request
		code policyv1.DenialCode
		rule string
	}{
		{name: "allowed has no code", c: c, req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products"}, code: none, rule: "list-products"},
		{name: "host in no entry", c: c, req: Request{Method: "GET", Host: "example.com", Path: "/"}, code: host, rule: RuleDefault},
		{name: "a rule matches the path, not the method", c: c, req: Request{Method: "DELETE", Host: "api.stripe.com", Path: "/v1/products/p1"}, code: method, rule: "hosts[0].default"},
		{name: "no rule matches the path", c: c, req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/customers"}, code: path, rule: "hosts[0].default"},
		{name: "a deny rule's path with another method is the default's", c: c, req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/charges"}, code: path, rule: "hosts[0].default"},
		{name: "explicit deny rule", c: c, req: Request{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges"}, code: ruleD, rule: "no-charges"},
		{name: "port not listed", c: c, req: Request{Method: "GET", Host: "open.test", Path: "/", Port: 9090}, code: port, rule: "hosts[2].ports"},
		{name: "default port not named", c: c, req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products", Port: 8443}, code: port, rule: "hosts[0].ports"},
		{name: "scheme not listed", c: c, req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products", Scheme: "http"}, code: port, rule: "hosts[0].schemes"},
		{name: "upgrade where only plain requests are allowed", c: c, req: Request{Method: "GET", Host: "ws.test", Path: "/poll", WebSocket: true}, code: websocket, rule: "hosts[1].default"},
		{name: "upgrade where the rule allows it", c: c, req: Request{Method: "GET", Host: "ws.test", Path: "/stream", WebSocket: true}, code: none, rule: "stream"},
		{name: "upgrade to a host whose default allows", c: c, req: Request{Method: "GET", Host: "open.test", Path: "/x", WebSocket: true}, code: websocket, rule: "hosts[2].default"},
		{name: "upgrade on a path no rule names", c: c, req: Request{Method: "GET", Host: "ws.test", Path: "/other", WebSocket: true}, code: path, rule: "hosts[1].default"},
		{name: "path with a semicolon", c: c, req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/products;x"}, code: ambiguous, rule: "hosts[0].path"},
		{name: "non-canonical path", c: c, req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/%70roducts"}, code: ambiguous, rule: ""},
		{name: "malformed method", c: c, req: Request{Method: "GE T", Host: "api.stripe.com", Path: "/"}, code: ambiguous, rule: ""},
		{name: "no policy in force", c: &Compiled{}, req: Request{Method: "GET", Host: "api.stripe.com", Path: "/"}, code: host, rule: RuleDefault},
		{name: "token's allowedDomains", c: token, req: Request{Method: "GET", Host: "open.test", Path: "/"}, code: tokenD, rule: RuleTokenDomains},
		{name: "token's apiLimits", c: token, req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/events"}, code: tokenD, rule: RuleTokenRevoked},
		{name: "the operator's denial under a token keeps its code", c: token, req: Request{Method: "GET", Host: "api.stripe.com", Path: "/v1/customers"}, code: path, rule: "hosts[0].default"},
		{name: "audit mode keeps the code", c: c.Audited(), req: Request{Method: "DELETE", Host: "api.stripe.com", Path: "/v1/products/p1"}, code: method, rule: "hosts[0].default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.c.Decide(tt.req)
			if d.Code != tt.code || d.RuleID != tt.rule {
				t.Errorf("Decide(%+v) = %v by %q (%s), want %v by %q", tt.req, d.Code, d.RuleID, d.Reason, tt.code, tt.rule)
			}
			if (d.Code == none) != (d.Action == policyv1.Action_ACTION_ALLOW) {
				t.Errorf("action %v with code %v", d.Action, d.Code)
			}
		})
	}
}

func TestDenialCodeName(t *testing.T) {
	tests := []struct {
		code policyv1.DenialCode
		want string
	}{
		{policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED, ""},
		{policyv1.DenialCode_DENIAL_CODE_PATH_NOT_ALLOWED, "path_not_allowed"},
		{policyv1.DenialCode_DENIAL_CODE_DECISION_UNAVAILABLE, "decision_unavailable"},
		{policyv1.DenialCode_DENIAL_CODE_TOKEN_DENIED, "token_denied"},
	}
	for _, tt := range tests {
		if got := DenialCodeName(tt.code); got != tt.want {
			t.Errorf("DenialCodeName(%v) = %q, want %q", tt.code, got, tt.want)
		}
	}
	// Every code has a name of the refusal body's vocabulary.
	for n := range policyv1.DenialCode_name {
		code := policyv1.DenialCode(n)
		if name := DenialCodeName(code); code != 0 && (name == "" || name != strings.ToLower(name) || strings.Contains(name, "denial_code")) {
			t.Errorf("DenialCodeName(%v) = %q", code, name)
		}
	}
}
