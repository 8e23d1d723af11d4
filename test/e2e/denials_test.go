package e2e

import (
	"fmt"
	"strings"
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy"
)

// denialPolicy is the egress tests' policy with an OpenAI host whose one
// rule lists models. No stand-in serves api.openai.com: the proxy answers
// every request to it that the test makes.
const denialPolicy = basePolicy + `  - host: api.openai.com
    rules:
      - { id: list-models, methods: [GET], path: /v1/models, action: allow }
    default: deny
`

// denialCode is the program of TestSDKErrorsCarryTheDenial: each request
// is refused for another reason, and each SDK's own error is reported as
// the SDK raised it.
const denialCode = `
const Stripe = require("stripe");
const axios = require("axios");
const OpenAI = require("openai");
const stripe = new Stripe(%[1]q, { maxNetworkRetries: 0, telemetry: false });
const stripeOtherPort = new Stripe(%[1]q, { port: 8443, maxNetworkRetries: 0, telemetry: false });
const openai = new OpenAI({ apiKey: "sk-test-denials", maxRetries: 0 });
const fromStripe = e => ({ status: e.statusCode, code: e.code, type: e.type, message: e.message, rule: e.raw && e.raw.rule_id, hint: e.raw && e.raw.hint, errType: e.raw && e.raw.type });
const fromAxios = e => e.response ? { status: e.response.status, code: e.response.data.error.code, message: e.response.data.error.message, rule: e.response.data.rule_id, hint: e.response.data.hint, errType: e.response.data.error.type } : { code: "no response: " + e.code };
const fromOpenAI = e => ({ status: e.status, code: e.code, type: e.constructor.name, message: e.message, rule: e.error && e.error.rule_id, hint: e.error && e.error.hint, errType: e.type });
const attempt = async (f, from) => { try { await f(); return { code: "succeeded" }; } catch (e) { return from(e); } };
(async () => {
  const out = {};
  out.stripeCharge = await attempt(() => stripe.charges.create({ amount: 100, currency: "usd", source: "tok_visa" }), fromStripe);
  out.stripeCustomers = await attempt(() => stripe.customers.list({ limit: 1 }), fromStripe);
  out.stripePort = await attempt(() => stripeOtherPort.products.list({ limit: 1 }), fromStripe);
  out.axiosMethod = await attempt(() => axios.delete("https://api.stripe.com/v1/products/prod_1"), fromAxios);
  out.axiosHost = await attempt(() => axios.get("http://api.github.test/x", { headers: { Host: "forbidden.test" } }), fromAxios);
  out.openaiPath = await attempt(() => openai.chat.completions.create({ model: "gpt-test", messages: [{ role: "user", content: "hi" }] }), fromOpenAI);
  console.log(JSON.stringify(out));
})();
`

// denial is what the program reports of one SDK error.
type denial struct {
	Status                                   int
	Code, Type, Message, Rule, Hint, ErrType string
}

// leaks are the parts of denialPolicy no refusal may name unless the
// request itself did: the rules that allow, and the other hosts.
var leaks = []string{"list-products", "pay-products", "echo-ws", "list-models", "/v1/models", "/v1/products", "pay.test", "api.github.test"}

// TestSDKErrorsCarryTheDenial makes requests a policy refuses with the
// Stripe SDK, axios and the OpenAI SDK inside a sandbox, through the real
// proxy: each SDK's error carries the refusal's code, message, rule and
// hint; no hint names what the policy allows; and the request events and
// the network log carry the same code. Then an inline limit refuses the
// Stripe SDK's second request as over budget.
func TestSDKErrorsCarryTheDenial(t *testing.T) {
	s := startNetStackWith(t, denialPolicy, nil)
	req := &executorv1.ExecuteRequest{Image: sdkImage, Code: fmt.Sprintf(denialCode, secret)}
	var got map[string]denial
	r := probe(t, s.e, req, &got)
	for name, d := range got {
		t.Logf("%s: %d %s %s: %q; hint %q", name, d.Status, d.Type, d.Code, d.Message, d.Hint)
	}
	tests := []struct {
		name     string
		code     policyv1.DenialCode
		rule     string
		typ      string // the SDK's error class, where it has its own
		message  string // a substring of the message
		hint     string // the hint, or a substring of it
		host     string // the request's host and path, for its event
		path     string
		ownsPath bool // the request's own path is in leaks
	}{
		{name: "stripeCharge", code: policyv1.DenialCode_DENIAL_CODE_RULE_DENIED, rule: "no-charges", typ: "StripePermissionError",
			message: "sandpit blocked POST api.stripe.com/v1/charges: charges are not allowed (rule no-charges)",
			hint:    "rule no-charges of the operator's policy denies this request", host: "api.stripe.com", path: "/v1/charges"},
		{name: "stripeCustomers", code: policyv1.DenialCode_DENIAL_CODE_PATH_NOT_ALLOWED, rule: "hosts[0].default", typ: "StripePermissionError",
			message: "no rule of api.stripe.com matches GET /v1/customers",
			hint:    "no rule allows GET /v1/customers on api.stripe.com; the operator's policy would need one", host: "api.stripe.com", path: "/v1/customers"},
		{name: "stripePort", code: policyv1.DenialCode_DENIAL_CODE_PORT_NOT_ALLOWED, rule: "hosts[0].ports", typ: "StripePermissionError",
			message: "not 8443", hint: "api.stripe.com is not allowed over https on port 8443", host: "api.stripe.com", path: "/v1/products", ownsPath: true},
		{name: "axiosMethod", code: policyv1.DenialCode_DENIAL_CODE_METHOD_NOT_ALLOWED, rule: "hosts[0].default",
			message: "sandpit blocked DELETE api.stripe.com/v1/products/prod_1",
			hint:    "no rule allows DELETE on this path of api.stripe.com; the operator's policy would need one", host: "api.stripe.com", path: "/v1/products/prod_1", ownsPath: true},
		{name: "axiosHost", code: policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED, rule: "default",
			message: "host forbidden.test is not in the policy",
			hint:    "no rule allows requests to forbidden.test; the operator's policy would need an entry for the host", host: "forbidden.test", path: "/x"},
		{name: "openaiPath", code: policyv1.DenialCode_DENIAL_CODE_PATH_NOT_ALLOWED, rule: "hosts[3].default", typ: "PermissionDeniedError",
			// The OpenAI SDK puts the status before the body's message.
			message: "403 sandpit blocked POST api.openai.com/v1/chat/completions",
			hint:    "no rule allows POST /v1/chat/completions on api.openai.com; the operator's policy would need one", host: "api.openai.com", path: "/v1/chat/completions"},
	}
	events := map[string]*executorv1.NetworkEvent{} // by host and path
	for _, ev := range requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST) {
		events[ev.GetHost()+strings.SplitN(strings.SplitN(ev.GetUrl(), ev.GetHost(), 2)[1], "?", 2)[0]] = ev
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, ok := got[tt.name]
			code := policy.DenialCodeName(tt.code)
			if !ok || d.Status != 403 || d.Code != code || d.ErrType != "sandpit_policy_denied" || d.Rule != tt.rule {
				t.Fatalf("SDK error %+v, want 403 %s (type sandpit_policy_denied) by rule %s", d, code, tt.rule)
			}
			if tt.typ != "" && d.Type != tt.typ {
				t.Errorf("the SDK raised %s, want %s", d.Type, tt.typ)
			}
			if !strings.Contains(d.Message, tt.message) || !strings.Contains(d.Hint, tt.hint) {
				t.Errorf("message %q, hint %q; want them to hold %q and %q", d.Message, d.Hint, tt.message, tt.hint)
			}
			for _, l := range leaks {
				if strings.Contains(d.Hint, l) && !(tt.ownsPath && strings.Contains(tt.path, l)) {
					t.Errorf("hint %q names %q, which the request did not", d.Hint, l)
				}
			}
			// The port is in the event's URL, not its key.
			key := tt.host + tt.path
			if tt.name == "stripePort" {
				key = tt.host + ":8443" + tt.path
			}
			if ev := events[key]; ev.GetDenialCode() != tt.code || ev.GetDecision() != policyv1.Decision_DECISION_DENY || ev.GetRuleId() != tt.rule {
				t.Errorf("request event %v, want %v by %s", ev, tt.code, tt.rule)
			}
		})
	}
	if len(r.result.GetNetworkLog()) != len(tests) {
		t.Errorf("network log of %d entries, want %d: %v", len(r.result.GetNetworkLog()), len(tests), r.result.GetNetworkLog())
	}
	for _, l := range r.result.GetNetworkLog() {
		if l.GetDenialCode() == policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED || !l.GetBlocked() || l.GetStatusCode() != 403 {
			t.Errorf("log entry %v, want a blocked request with its code", l)
		}
	}
	if n := s.forbidden.hits.Load(); n != 0 {
		t.Errorf("the forbidden stand-in got %v", s.forbidden.requests())
	}
	s.noLeak(t, r)

	// Over the inline policy's max_requests, the SDK sees budget_exceeded.
	req = &executorv1.ExecuteRequest{Image: sdkImage, Code: fmt.Sprintf(`
const Stripe = require("stripe");
const stripe = new Stripe(%q, { maxNetworkRetries: 0, telemetry: false });
(async () => {
  const out = [];
  for (let i = 0; i < 2; i++) {
    try { await stripe.products.list({ limit: 1 }); out.push("listed"); }
    catch (e) { out.push(e.statusCode + " " + e.code + " " + e.raw.rule_id + ": " + e.raw.hint); }
  }
  console.log(JSON.stringify(out));
})();
`, secret), Policy: &policyv1.Policy{DefaultAction: policyv1.Action_ACTION_ALLOW, Limits: &policyv1.PolicyLimits{MaxRequests: 1}}}
	var budget []string
	r = probe(t, s.e, req, &budget)
	t.Logf("under max_requests 1: %q", budget)
	if len(budget) != 2 || budget[0] != "listed" || !strings.HasPrefix(budget[1], "403 budget_exceeded limits.max_requests: the execution is over its policy's limit limits.max_requests") {
		t.Errorf("two product lists under max_requests 1: %q, want one listed and one 403 budget_exceeded", budget)
	}
	if l := r.result.GetNetworkLog(); len(l) != 2 || l[0].GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED || l[1].GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED {
		t.Errorf("network log %v, want the allowed list and then budget_exceeded", l)
	}
}
