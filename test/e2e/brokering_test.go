package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// brokerPolicy binds two secrets: Stripe's key to api.stripe.com's
// list-products rule as a bearer token, and a GitHub token to
// api.github.test as a bearer token. pay.test is allowed, and bound to no
// secret.
const brokerPolicy = `
version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { id: list-products, methods: [GET], path: /v1/products, action: allow }
      - { id: list-customers, methods: [GET], path: /v1/customers, action: allow }
  - { host: api.github.test, default: allow }
  - { host: pay.test, default: allow }
secrets:
  - secret: stripe
    placeholder: sk_test_
    hosts: [api.stripe.com]
    rules: [list-products]
    header: { name: Authorization, template: "Bearer {{secret}}" }
  - secret: github
    placeholder: ghp_
    hosts: [api.github.test]
    header: { name: Authorization, template: "Bearer {{secret}}" }
`

// The values only the executor's store and the stand-ins know.
const (
	realStripeKey = "sk_live_51RealStripeKeyTheSandboxNeverSees000"
	realGitHubKey = "ghp_RealGitHubTokenTheSandboxNeverSees0000"
)

// brokerCode calls each host with the placeholders it was given: the
// Stripe SDK lists products (bound) and customers (another rule), axios
// calls api.github.test with its bearer token (bound), and pay.test and
// api.stripe.com's query with Stripe's placeholder (misuse). It prints its
// environment's placeholders and what each call returned.
const brokerCode = `
const Stripe = require("stripe");
const axios = require("axios");
const key = process.env.STRIPE_SECRET_KEY, gh = process.env.GITHUB_TOKEN;
const stripe = new Stripe(key, { maxNetworkRetries: 0, telemetry: false });
const err = e => e.response ? { status: e.response.status, code: e.response.data.error && e.response.data.error.code } :
  { status: e.statusCode, code: e.code || (e.raw && e.raw.code), type: e.type };
const attempt = async f => { try { return await f(); } catch (e) { return { failed: err(e) }; } };
(async () => {
  const out = { key, gh };
  out.products = await attempt(async () => { const l = await stripe.products.list({ limit: 1 }); return { description: l.data[0].description, echo: l.lastResponse.headers["x-echo-key"] }; });
  out.customers = await attempt(() => stripe.customers.list({ limit: 1 }));
  out.github = await attempt(async () => (await axios.get("https://api.github.test/user", { headers: { Authorization: "Bearer " + gh } })).data);
  out.payBearer = await attempt(() => axios.get("https://pay.test/v1/products/p1", { headers: { Authorization: "Bearer " + key } }));
  out.stripeQuery = await attempt(() => axios.get("https://api.stripe.com/v1/products?key=" + key));
  console.log(JSON.stringify(out));
})();
`

// keyChecker is a stand-in that answers only a request with the bearer
// token want, reflecting the Authorization header back in a response
// header and in the body, as some APIs do in errors or echoes.
func keyChecker(t *testing.T, want string, body func(auth string) string) (addr string, got func() []string) {
	t.Helper()
	var seen lockedBuffer
	srv := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		fmt.Fprintf(&seen, "%s %s auth=%s accept-encoding=%s\n", r.Method, r.URL.RequestURI(), auth, r.Header.Get("Accept-Encoding"))
		w.Header().Set("Content-Type", "application/json")
		if auth != "Bearer "+want {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":{"type":"invalid_request_error","message":"Invalid API Key provided"}}`)
			return
		}
		w.Header().Set("X-Echo-Key", auth)
		fmt.Fprint(w, body(auth))
	}))
	return srv.Listener.Addr().String(), func() []string { return strings.Split(strings.TrimSpace(seen.String()), "\n") }
}

// TestCredentialBrokering runs the real Stripe SDK and axios in a sandbox
// that holds only placeholders: the stand-ins for api.stripe.com and
// api.github.test get the real values (they refuse anything else); the
// values reflected back reach the sandbox as placeholders; the Stripe
// placeholder sent to another allowed host, with a rule it is not bound
// to, or in the query, is refused as secret_misuse and never forwarded;
// the placeholders printed are only placeholders; and neither value is
// anywhere in what the executor and the proxy wrote (their logs, the
// events, the Result).
func TestCredentialBrokering(t *testing.T) {
	dir := t.TempDir()
	for name, v := range map[string]string{"stripe": realStripeKey, "github": realGitHubKey} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	eo := startEgress(t, ports, brokerPolicy)
	execLogs := &lockedBuffer{}
	e := startExecutor(t, executorOpts{egress: eo, logs: execLogs, allow: []string{sdkImage}, flags: []string{"--secrets-dir", dir}})
	stripeAddr, stripeSeen := keyChecker(t, realStripeKey, func(auth string) string {
		return fmt.Sprintf(`{"object":"list","url":"/v1/products","has_more":false,"data":[{"id":"prod_1","object":"product","description":%q}]}`, "called with "+auth)
	})
	githubAddr, githubSeen := keyChecker(t, realGitHubKey, func(auth string) string { return fmt.Sprintf(`{"login":"octocat","token":%q}`, auth) })
	pay := newStandIn(t, "pay.test")
	proxy := startProxy(t, ports, e.deciderAddr, map[string]string{"api.stripe.com": stripeAddr, "api.github.test": githubAddr, "pay.test": pay.addr()}, upstreamCAPEM(t))
	e.waitProxy(t, proxy)

	var got struct {
		Key, Gh  string
		Products struct{ Description, Echo string }
		Github   struct{ Login, Token string }
		Customers, PayBearer, StripeQuery struct {
			Failed struct {
				Status int
				Code   string
			}
		}
	}
	r := probe(t, e, &executorv1.ExecuteRequest{Image: sdkImage, Code: brokerCode,
		Secrets: map[string]string{"STRIPE_SECRET_KEY": "stripe", "GITHUB_TOKEN": "github"}}, &got)
	t.Logf("sandbox saw %+v", got)
	if !regexp.MustCompile(`^sk_test_SPX[A-Za-z0-9]{29}$`).MatchString(got.Key) || !regexp.MustCompile(`^ghp_SPX[A-Za-z0-9]{29}$`).MatchString(got.Gh) {
		t.Fatalf("the sandbox's environment held %q and %q, want placeholders", got.Key, got.Gh)
	}
	if want := "called with Bearer " + got.Key; got.Products.Description != want || got.Products.Echo != "Bearer "+got.Key {
		t.Errorf("Stripe's products: %+v, want the reflected key as the placeholder (%q)", got.Products, want)
	}
	if got.Github.Login != "octocat" || got.Github.Token != "Bearer "+got.Gh {
		t.Errorf("axios to api.github.test: %+v, want octocat and the placeholder reflected", got.Github)
	}
	for name, f := range map[string]struct {
		Status int
		Code   string
	}{"customers": got.Customers.Failed, "payBearer": got.PayBearer.Failed, "stripeQuery": got.StripeQuery.Failed} {
		if f.Status != 403 || f.Code != "secret_misuse" {
			t.Errorf("%s: %+v, want 403 secret_misuse", name, f)
		}
	}
	if s := stripeSeen(); !slices.Equal(s, []string{"GET /v1/products?limit=1 auth=Bearer " + realStripeKey + " accept-encoding=identity"}) {
		t.Errorf("the Stripe stand-in saw %q, want only the product listing, with the real key, uncompressed", s)
	}
	if s := githubSeen(); !slices.Equal(s, []string{"GET /user auth=Bearer " + realGitHubKey + " accept-encoding=identity"}) {
		t.Errorf("the GitHub stand-in saw %q, want one request with the real token", s)
	}
	if n := pay.hits.Load(); n != 0 {
		t.Errorf("pay.test got %v: a misused placeholder was forwarded", pay.requests())
	}

	res := r.result
	if res.GetRequestsWithSecrets() != 2 || res.GetRequestsSecretMisuse() != 3 {
		t.Errorf("Result: %d with secrets, %d misuse; want 2 and 3", res.GetRequestsWithSecrets(), res.GetRequestsSecretMisuse())
	}
	misused := 0
	for _, l := range res.GetNetworkLog() {
		if l.GetDenialCode() == policyv1.DenialCode_DENIAL_CODE_SECRET_MISUSE {
			misused++
			if !slices.Equal(l.GetSecrets(), []string{"stripe"}) || !l.GetBlocked() || !strings.HasPrefix(l.GetRuleId(), "secrets.") {
				t.Errorf("misuse log entry %v, want blocked, rule secrets.stripe, naming stripe", l)
			}
		}
	}
	if misused != 3 {
		t.Errorf("%d misuse entries in the log, want 3: %v", misused, res.GetNetworkLog())
	}

	// Neither value anywhere the executor or the proxy wrote.
	var wrote strings.Builder
	for _, ev := range r.events {
		b, _ := protojson.Marshal(ev)
		wrote.Write(b)
	}
	wrote.WriteString(execLogs.String())
	wrote.WriteString(proxy.logs.String())
	wrote.Write(r.stdout)
	wrote.Write(r.stderr)
	for _, v := range []string{realStripeKey, realGitHubKey} {
		if strings.Contains(wrote.String(), v) {
			t.Errorf("a real value is in what the executor and proxy wrote (%d bytes searched)", wrote.Len())
		}
	}
	if wrote.Len() < 1000 || !strings.Contains(wrote.String(), got.Key) {
		t.Errorf("searched only %d bytes, without the placeholder: the search proves nothing", wrote.Len())
	}
}

