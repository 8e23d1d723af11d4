package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
func keyChecker(t *testing.T, body func(auth string) string, want ...string) (addr string, got func() []string) {
	t.Helper()
	var seen lockedBuffer
	srv := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		fmt.Fprintf(&seen, "%s %s auth=%s accept-encoding=%s\n", r.Method, r.URL.RequestURI(), auth, r.Header.Get("Accept-Encoding"))
		w.Header().Set("Content-Type", "application/json")
		if !slices.ContainsFunc(want, func(w string) bool { return auth == "Bearer "+w }) {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":{"type":"invalid_request_error","message":"Invalid API Key provided"}}`)
			return
		}
		w.Header().Set("X-Echo-Key", auth)
		fmt.Fprint(w, body(auth))
	}))
	return srv.Listener.Addr().String(), func() []string { return strings.Split(strings.TrimSpace(seen.String()), "\n") }
}

func githubBody(auth string) string { return fmt.Sprintf(`{"login":"octocat","token":%q}`, auth) }

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
	stripeAddr, stripeSeen := keyChecker(t, func(auth string) string {
		return fmt.Sprintf(`{"object":"list","url":"/v1/products","has_more":false,"data":[{"id":"prod_1","object":"product","description":%q}]}`, "called with "+auth)
	}, realStripeKey)
	githubAddr, githubSeen := keyChecker(t, githubBody, realGitHubKey)
	pay := newStandIn(t, "pay.test")
	proxy := startProxy(t, ports, e.deciderAddr, map[string]string{"api.stripe.com": stripeAddr, "api.github.test": githubAddr, "pay.test": pay.addr()}, upstreamCAPEM(t))
	e.waitProxy(t, proxy)

	var got struct {
		Key, Gh                           string
		Products                          struct{ Description, Echo string }
		Github                            struct{ Login, Token string }
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

// tenantSecretsPolicy is each tenant's policy: api.github.test, with the
// tenant's own "github" and "stripe" secrets bound to it.
const tenantSecretsPolicy = `version: 1
hosts:
  - { host: api.github.test, default: allow }
secrets:
  - { secret: github, placeholder: ghp_, hosts: [api.github.test], header: { name: Authorization, template: "Bearer {{secret}}" } }
  - { secret: stripe, placeholder: sk_test_, hosts: [api.github.test], header: { name: X-Stripe-Key } }
`

const githubTokenJS = `
const axios = require("axios");
(async () => {
  try {
    const r = await axios.get("https://api.github.test/user", { headers: { Authorization: "Bearer " + process.env.GITHUB_TOKEN } });
    console.log(JSON.stringify({ status: r.status, token: r.data.token }));
  } catch (e) { console.log(JSON.stringify({ status: e.response ? e.response.status : 0 })); }
})();
`

// TestTenantSecrets: a tenant's secret (DIR/<tenant>/<name>) reaches its
// bound host for that tenant's executions only: acme and globex each get
// their own value under the same name, and globex naming a secret only
// acme has is refused with SECRET_NOT_ALLOWED before anything runs.
func TestTenantSecrets(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"tenants.yaml":          "version: 1\ntenants:\n  - { tenant: acme, policy: tenant.yaml }\n  - { tenant: globex, policy: tenant.yaml }\n",
		"tenant.yaml":           tenantSecretsPolicy,
		"secrets/acme/github":   "ghp_AcmeRealToken0000000000000000000000",
		"secrets/acme/stripe":   "sk_live_AcmeRealStripe000000000000000000",
		"secrets/globex/github": "ghp_GlobexRealToken00000000000000000000",
		"jwt-secret":            jwtSecret,
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	logs := &lockedBuffer{}
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, ""), logs: logs, allow: []string{sdkImage}, flags: []string{
		"--jwt-hs256-secret-file", filepath.Join(dir, "jwt-secret"), "--jwt-issuer", "e2e", "--jwt-audience", "sandpit",
		"--tenants-file", filepath.Join(dir, "tenants.yaml"), "--secrets-dir", filepath.Join(dir, "secrets"),
	}})
	addr, seen := keyChecker(t, githubBody, files["secrets/acme/github"], files["secrets/globex/github"])
	p := startProxy(t, ports, e.deciderAddr, map[string]string{"api.github.test": addr}, upstreamCAPEM(t))
	e.waitProxy(t, p)

	for i, tenant := range []string{"acme", "globex"} {
		r := e.execute(asTenant(t, tenant, ""), &executorv1.ExecuteRequest{Image: sdkImage, Code: githubTokenJS, Secrets: map[string]string{"GITHUB_TOKEN": "github"}})
		if r.err != nil {
			t.Fatalf("%s: %v", tenant, r.err)
		}
		var got struct {
			Status int
			Token  string
		}
		if err := json.Unmarshal(r.stdout, &got); err != nil || got.Status != 200 || !regexp.MustCompile(`^Bearer ghp_SPX[A-Za-z0-9]{29}$`).MatchString(got.Token) {
			t.Errorf("%s: %s (%v), want 200 and its placeholder reflected", tenant, r.stdout, err)
		}
		if s := seen(); len(s) != i+1 || !strings.Contains(s[i], "auth=Bearer "+files["secrets/"+tenant+"/github"]) {
			t.Errorf("%s: the stand-in saw %q, want the tenant's own token", tenant, s)
		}
	}

	r := e.execute(asTenant(t, "globex", ""), &executorv1.ExecuteRequest{Image: sdkImage, Code: githubTokenJS, Secrets: map[string]string{"STRIPE_KEY": "stripe"}})
	if status.Code(r.err) != codes.PermissionDenied || !strings.Contains(r.err.Error(), `tenant globex has no secret "stripe"`) || r.started != nil {
		t.Errorf("globex naming acme's secret: %v (started %v), want PermissionDenied SECRET_NOT_ALLOWED before anything ran", r.err, r.started)
	}
	var ei *errdetails.ErrorInfo
	for _, d := range status.Convert(r.err).Details() {
		if x, ok := d.(*errdetails.ErrorInfo); ok {
			ei = x
		}
	}
	if ei.GetReason() != "SECRET_NOT_ALLOWED" {
		t.Errorf("reason %q, want SECRET_NOT_ALLOWED", ei.GetReason())
	}
	for _, v := range []string{files["secrets/acme/github"], files["secrets/acme/stripe"], files["secrets/globex/github"]} {
		if strings.Contains(logs.String(), v) || strings.Contains(p.logs.String(), v) {
			t.Error("a tenant's secret is in the executor's or the proxy's log")
		}
	}
}
