package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/pgtest"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// The tenants of TestTenantsEndToEnd. The operator's policy (basePolicy)
// allows api.github.test over http on every path; acme may reach /repos
// only, and enforces; globex may reach /public only, and audits (rolls a
// tighter policy out). Both have a tier "free" with one execution at a
// time.
const (
	tenantsYAML = `version: 1
tenants:
  - tenant: acme
    policy: acme.yaml
    limits: { max_timeout: 20s, max_concurrent: 2 }
    tiers:
      - tier: free
        limits: { max_concurrent: 1 }
  - tenant: globex
    mode: audit
    policy: globex.yaml
`
	acmePolicy = `version: 1
hosts:
  - host: api.github.test
    schemes: [http]
    rules:
      - { id: acme-repos, methods: [GET], path: "/repos/**", action: allow }
`
	// acmeWidened is acme's policy after the operator's edit: /admin too.
	acmeWidened = `version: 1
hosts:
  - host: api.github.test
    schemes: [http]
    rules:
      - { id: acme-repos, methods: [GET], path: "/repos/**", action: allow }
      - { id: acme-admin, methods: [GET], path: "/admin", action: allow }
`
	globexPolicy = `version: 1
hosts:
  - host: api.github.test
    schemes: [http]
    rules:
      - { id: globex-public, methods: [GET], path: "/public/**", action: allow }
`
)

// httpRequestsJS makes the plain-HTTP requests of its first argument
// ([[method, path], ...], Host api.github.test) through the sandbox's
// gateway, one after another, and prints each status line as JSON.
const httpRequestsJS = `
const net = require("net"), os = require("os");
const gw = os.networkInterfaces().eth0.find(a => a.family === "IPv4").address.replace(/\.\d+$/, m => "." + (Number(m.slice(1)) - 1));
const one = ([method, path]) => new Promise(res => {
  const s = net.connect(80, gw, () => s.write(method + " " + path + " HTTP/1.1\r\nHost: api.github.test\r\nConnection: close\r\n\r\n"));
  let data = "";
  s.on("data", d => data += d);
  s.on("end", () => res(data.split("\r\n")[0]));
  s.on("error", e => res(e.code));
});
(async () => {
  const out = [];
  for (const r of JSON.parse(process.argv[2])) out.push(await one(r));
  console.log(JSON.stringify(out));
})();
`

// tenantToken is an HS256 token (jwtSecret) for tenant sub in tier.
func tenantToken(t *testing.T, sub, tier string) string {
	t.Helper()
	claims := jwt.MapClaims{"sub": sub, "iss": "e2e", "aud": "sandpit", "exp": time.Now().Add(time.Hour).Unix()}
	if tier != "" {
		claims["tier"] = tier
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func asTenant(t *testing.T, sub, tier string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tenantToken(t, sub, tier))
}

func reasonOf(err error) (string, map[string]string) {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason(), info.GetMetadata()
		}
	}
	return "", nil
}

// TestTenantsEndToEnd runs an executor with a tenants file, JWT callers, the
// proxy and real sandboxes making real requests to a stand-in:
//   - each tenant gets its own policy (acme never gets globex's), with the
//     source that decided in every event and log entry;
//   - globex, in audit mode, has its would-blocks forwarded and marked in
//     the stream and the Result, and logged;
//   - an edit of the tenants' policy changes the next execution without a
//     restart, and a broken edit keeps the last good version and says why;
//   - an unknown tenant or tier, a timeout above the tenant's maximum and a
//     second concurrent execution of a one-at-a-time tier are refused;
//   - Check and sandpit-check agree with what the executions decided.
func TestTenantsEndToEnd(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		// Written to a temporary file and renamed, so the executor never
		// reads half a file; the mtime moves on every write.
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	write("tenants.yaml", tenantsYAML)
	write("acme.yaml", acmePolicy)
	write("globex.yaml", globexPolicy)
	secret := filepath.Join(dir, "jwt-secret")
	if err := os.WriteFile(secret, []byte(jwtSecret), 0o600); err != nil {
		t.Fatal(err)
	}

	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	logs := &lockedBuffer{}
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy), logs: logs, flags: []string{
		"--jwt-hs256-secret-file", secret, "--jwt-issuer", "e2e", "--jwt-audience", "sandpit",
		"--tenants-file", filepath.Join(dir, "tenants.yaml"), "--tenants-reload-interval", "200ms",
		"--metrics-listen", "127.0.0.1:0",
	}})
	scrape := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + e.app.MetricsAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	var mu sync.Mutex
	hits := map[string]int{}
	github := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		mu.Unlock()
	}))
	t.Cleanup(github.Close)
	hitsOf := func(path string) int {
		mu.Lock()
		defer mu.Unlock()
		return hits[path]
	}
	p := startProxy(t, ports, e.deciderAddr, map[string]string{"api.github.test": github.Listener.Addr().String()}, upstreamCAPEM(t))
	e.waitProxy(t, p)

	requests := [][2]string{{"GET", "/repos/x"}, {"GET", "/admin"}, {"GET", "/public/y"}, {"POST", "/repos/x"}}
	reqJSON, err := json.Marshal(requests)
	if err != nil {
		t.Fatal(err)
	}
	// runAs runs the requests as tenant sub and returns the status lines
	// and the run.
	runAs := func(sub, tier string) ([]string, *run) {
		t.Helper()
		r := e.execute(asTenant(t, sub, tier), &executorv1.ExecuteRequest{Code: httpRequestsJS, Args: []string{string(reqJSON)}})
		if r.err != nil || r.result == nil {
			t.Fatalf("Execute as %s: %v\nstdout: %s\nstderr: %s", sub, r.err, r.stdout, r.stderr)
		}
		var got []string
		if err := json.Unmarshal(r.stdout, &got); err != nil || len(got) != len(requests) {
			t.Fatalf("as %s: stdout %q: %v", sub, r.stdout, err)
		}
		return got, r
	}
	// decided is each request's event: decision, rule and source.
	decided := func(r *run) []*executorv1.NetworkEvent {
		t.Helper()
		evs := requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST)
		if len(evs) != len(requests) {
			t.Fatalf("%d request events, want %d: %v", len(evs), len(requests), evs)
		}
		for i, ev := range evs {
			if ev.GetUrl() != "http://api.github.test"+requests[i][1] || ev.GetMethod() != requests[i][0] {
				t.Fatalf("event %d is %s %s, want %s %s", i, ev.GetMethod(), ev.GetUrl(), requests[i][0], requests[i][1])
			}
			if entry := r.result.GetNetworkLog()[i]; entry.GetSource() != ev.GetSource() || entry.GetDecision() != ev.GetDecision() || entry.GetRuleId() != ev.GetRuleId() {
				t.Errorf("log entry %d %v differs from its event %v", i, entry, ev)
			}
		}
		return evs
	}
	type verdict struct {
		decision policyv1.Decision
		rule     string
		source   string
		code     policyv1.DenialCode
	}
	want := func(t *testing.T, who string, evs []*executorv1.NetworkEvent, vs []verdict) {
		t.Helper()
		for i, v := range vs {
			if ev := evs[i]; ev.GetDecision() != v.decision || ev.GetRuleId() != v.rule || ev.GetSource() != v.source || ev.GetDenialCode() != v.code {
				t.Errorf("%s %s %s: %v by %q (%s, %v), want %v by %q (%s, %v)", who, requests[i][0], requests[i][1],
					ev.GetDecision(), ev.GetRuleId(), ev.GetSource(), ev.GetDenialCode(), v.decision, v.rule, v.source, v.code)
			}
		}
	}
	allow, deny, would := policyv1.Decision_DECISION_ALLOW, policyv1.Decision_DECISION_DENY, policyv1.Decision_DECISION_WOULD_BLOCK
	noCode, pathCode, methodCode := policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED, policyv1.DenialCode_DENIAL_CODE_PATH_NOT_ALLOWED, policyv1.DenialCode_DENIAL_CODE_METHOD_NOT_ALLOWED

	// acme enforces its own policy under the operator's.
	got, r := runAs("acme", "")
	if r.started.GetTenant() != "acme" || r.started.GetPolicyMode() != policyv1.Mode_MODE_ENFORCE {
		t.Errorf("acme's Started: %v", r.started)
	}
	acmeVerdicts := []verdict{
		{allow, "acme-repos", "tenant", noCode},
		{deny, "hosts[0].default", "tenant", pathCode},
		{deny, "hosts[0].default", "tenant", pathCode},
		{deny, "hosts[0].default", "tenant", methodCode},
	}
	want(t, "acme", decided(r), acmeVerdicts)
	if !strings.Contains(got[0], "200") || !strings.Contains(got[1], "403") || hitsOf("/admin") != 0 || hitsOf("/public/y") != 0 {
		t.Errorf("acme's statuses %q, stand-in hits %v: want only /repos/x through", got, hits)
	}
	if r.result.GetRequestsAllowed() != 1 || r.result.GetRequestsBlocked() != 3 || r.result.GetRequestsWouldBlock() != 0 {
		t.Errorf("acme's Result counts: %d allowed, %d blocked, %d would-block", r.result.GetRequestsAllowed(), r.result.GetRequestsBlocked(), r.result.GetRequestsWouldBlock())
	}

	// globex audits: what its policy denies is forwarded and marked.
	before := hitsOf("/admin")
	got, r = runAs("globex", "")
	if r.started.GetTenant() != "globex" || r.started.GetPolicyMode() != policyv1.Mode_MODE_AUDIT {
		t.Errorf("globex's Started: %v, want tenant globex in audit mode", r.started)
	}
	globexVerdicts := []verdict{
		{would, "hosts[0].default", "tenant", pathCode},
		{would, "hosts[0].default", "tenant", pathCode},
		{allow, "globex-public", "tenant", noCode},
		{would, "hosts[0].default", "tenant", pathCode},
	}
	want(t, "globex", decided(r), globexVerdicts)
	for i, g := range got {
		if !strings.Contains(g, "200") {
			t.Errorf("globex's %v got %q: audit mode forwards every request", requests[i], g)
		}
	}
	if hitsOf("/admin") != before+1 {
		t.Errorf("globex's /admin did not reach the stand-in")
	}
	if r.result.GetRequestsAllowed() != 4 || r.result.GetRequestsWouldBlock() != 3 || r.result.GetRequestsBlocked() != 0 {
		t.Errorf("globex's Result counts: %d allowed, %d blocked, %d would-block; want 4, 0, 3", r.result.GetRequestsAllowed(), r.result.GetRequestsBlocked(), r.result.GetRequestsWouldBlock())
	}
	if l := logs.String(); !strings.Contains(l, `"msg":"request would be blocked (audit mode)"`) || !strings.Contains(l, `"tenant":"globex"`) {
		t.Error("the executor's log has no would-block line for globex")
	}
	_, metrics := scrape("/metrics")
	for _, series := range []string{
		`sandpit_requests_decided_total{decision="would_block",host="api.github.test",rule="hosts[0].default",source="tenant",tenant="globex"} 3`,
		`sandpit_requests_decided_total{decision="deny",host="api.github.test",rule="hosts[0].default",source="tenant",tenant="acme"} 3`,
		`sandpit_requests_decided_total{decision="allow",host="api.github.test",rule="acme-repos",source="tenant",tenant="acme"} 1`,
		"sandpit_tenants_ok 1",
	} {
		if !strings.Contains(metrics, series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}

	// Check and sandpit-check agree with what the executions decided.
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	check := policyv1.NewPolicyServiceClient(conn)
	var checked []*policyv1.CheckedRequest
	for _, rq := range requests {
		checked = append(checked, &policyv1.CheckedRequest{Method: rq[0], Url: "http://api.github.test" + rq[1]})
	}
	for who, vs := range map[string][]verdict{"acme": acmeVerdicts, "globex": globexVerdicts} {
		resp, err := check.Check(asTenant(t, who, ""), &policyv1.CheckRequest{Requests: checked})
		if err != nil {
			t.Fatalf("Check as %s: %v", who, err)
		}
		if resp.GetTenant() != who || len(resp.GetVerdicts()) != len(vs) {
			t.Fatalf("Check as %s: %v", who, resp)
		}
		for i, v := range vs {
			if got := resp.GetVerdicts()[i]; got.GetDecision() != v.decision || got.GetRuleId() != v.rule || got.GetSource() != v.source || got.GetDenialCode() != v.code {
				t.Errorf("Check as %s of %v: %v by %q (%s, %v), the execution decided %v by %q (%s, %v)", who, requests[i], got.GetDecision(), got.GetRuleId(), got.GetSource(), got.GetDenialCode(), v.decision, v.rule, v.source, v.code)
			}
		}
	}
	if _, err := check.Check(asTenant(t, "acme", ""), &policyv1.CheckRequest{Tenant: "globex", Requests: checked}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("acme checking globex's policy: %v, want PermissionDenied", err)
	}
	if _, err := check.Check(context.Background(), &policyv1.CheckRequest{Tenant: "acme", Requests: checked}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Check without a token: %v, want Unauthenticated", err)
	}
	cli, err := containerdtest.Artifact("SANDPIT_CHECK", "bin/sandpit-check")
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "acme.token")
	write("acme.token", tenantToken(t, "acme", ""))
	write("requests.txt", "# acme's\nGET http://api.github.test/repos/x\n\nGET http://api.github.test/admin\n")
	out, err := exec.Command(cli, "-addr", e.addr, "-token-file", tokenFile, "-f", filepath.Join(dir, "requests.txt")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "acme-repos") ||
		!strings.Contains(string(out), "deny") || !strings.Contains(string(out), "tenant acme") {
		t.Errorf("sandpit-check with a denied request: %v (want exit 1)\n%s", err, out)
	}
	out, err = exec.Command(cli, "-addr", e.addr, "-token-file", tokenFile, "GET", "http://api.github.test/repos/x").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "allow") {
		t.Errorf("sandpit-check with an allowed request: %v (want exit 0)\n%s", err, out)
	}
	// As the README shows it, with grpcurl through reflection.
	grpcurl, err := containerdtest.Artifact("SANDPIT_GRPCURL", "bin/grpcurl")
	if err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(grpcurl, "-plaintext", "-H", "authorization: Bearer "+tenantToken(t, "globex", ""),
		"-d", `{"requests": [{"method": "GET", "url": "http://api.github.test/admin"}]}`, e.addr, "sandpit.policy.v1.PolicyService/Check").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"DECISION_WOULD_BLOCK"`) || !strings.Contains(string(out), `"source": "tenant"`) {
		t.Errorf("grpcurl Check as globex: %v\n%s", err, out)
	}

	// Refusals before anything runs.
	refusals := []struct {
		name   string
		ctx    context.Context
		req    *executorv1.ExecuteRequest
		code   codes.Code
		reason string
		limit  string
	}{
		{name: "unknown tenant", ctx: asTenant(t, "initech", ""), req: code(`console.log(1)`), code: codes.PermissionDenied, reason: "TENANT_UNKNOWN"},
		{name: "unknown tier", ctx: asTenant(t, "acme", "gold"), req: code(`console.log(1)`), code: codes.PermissionDenied, reason: "TIER_UNKNOWN"},
		{name: "timeout above acme's", ctx: asTenant(t, "acme", ""),
			req:  &executorv1.ExecuteRequest{Code: "console.log(1)", Limits: &executorv1.Limits{Timeout: durationpb.New(time.Minute)}},
			code: codes.PermissionDenied, reason: "TENANT_LIMIT_EXCEEDED", limit: "max_timeout"},
	}
	for _, tt := range refusals {
		r := e.execute(tt.ctx, tt.req)
		reason, meta := reasonOf(r.err)
		if status.Code(r.err) != tt.code || reason != tt.reason || meta["limit"] != tt.limit || r.started != nil {
			t.Errorf("%s: %v (reason %q, %v), started %v; want %v %s before anything runs", tt.name, r.err, reason, meta, r.started, tt.code, tt.reason)
		}
	}
	// acme's free tier runs one at a time: the second is refused while the
	// first runs.
	ctx, cancel := context.WithCancel(asTenant(t, "acme", "free"))
	defer cancel()
	first, err := e.client.Execute(ctx, code(`console.log("running"); setTimeout(() => {}, 30000)`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Recv(); err != nil { // Started
		t.Fatal(err)
	}
	r = e.execute(asTenant(t, "acme", "free"), code(`console.log(1)`))
	if reason, meta := reasonOf(r.err); status.Code(r.err) != codes.ResourceExhausted || reason != "TENANT_QUOTA_EXCEEDED" || meta["limit"] != "max_concurrent" || meta["value"] != "1" {
		t.Errorf("a second execution of acme's free tier: %v (reason %q, %v), want ResourceExhausted TENANT_QUOTA_EXCEEDED max_concurrent=1", r.err, reason, meta)
	}
	cancel()

	// The operator widens acme's policy: the next execution sees it, no
	// restart.
	write("acme.yaml", acmeWidened)
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, r = runAs("acme", "")
		if evs := decided(r); evs[1].GetDecision() == allow {
			if evs[1].GetRuleId() != "acme-admin" || !strings.Contains(got[1], "200") {
				t.Errorf("after the edit, acme's /admin: %v by %q, %q", evs[1].GetDecision(), evs[1].GetRuleId(), got[1])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("acme's widened policy was not in force 20 s after the edit")
		}
		time.Sleep(300 * time.Millisecond)
	}
	// A broken edit keeps the last good version in force and says why.
	write("tenants.yaml", tenantsYAML+"  - tenant: acme\n    policy: acme.yaml\n")
	deadline = time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), `is listed twice`) {
		if time.Now().After(deadline) {
			t.Fatal("the executor did not log why the broken tenants file was refused")
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, r = runAs("acme", "")
	if evs := decided(r); evs[1].GetDecision() != allow || evs[1].GetRuleId() != "acme-admin" {
		t.Errorf("after a broken edit acme's /admin is %v by %q, want the last good version's allow by acme-admin", evs[1].GetDecision(), evs[1].GetRuleId())
	}
	if code, health := scrape("/healthz"); code != http.StatusOK || !strings.Contains(health, `"serving":true`) || !strings.Contains(health, "listed twice") {
		t.Errorf("/healthz after a broken edit: %d %s; want 200, serving, and the reason under tenants", code, health)
	}
	if _, metrics := scrape("/metrics"); !strings.Contains(metrics, "sandpit_tenants_ok 0") || !strings.Contains(metrics, `sandpit_tenants_reloads_total{result="failed"} 1`) {
		t.Errorf("/metrics after a broken edit lacks sandpit_tenants_ok 0 and one failed reload")
	}
}

// TestTenantsFromPostgres: an executor whose tenants are in PostgreSQL
// (--policy-store) decides by them, and a change in the database changes
// the next execution's decisions without a restart.
func TestTenantsFromPostgres(t *testing.T) {
	pg := pgtest.Start(t)
	secret := filepath.Join(t.TempDir(), "jwt-secret")
	if err := os.WriteFile(secret, []byte(jwtSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy), flags: []string{
		"--jwt-hs256-secret-file", secret, "--jwt-issuer", "e2e", "--jwt-audience", "sandpit",
		"--policy-store", pg.URL(),
	}})
	github := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(github.Close)
	p := startProxy(t, ports, e.deciderAddr, map[string]string{"api.github.test": github.Listener.Addr().String()}, upstreamCAPEM(t))
	e.waitProxy(t, p)

	// The executor migrated the empty database at start: acme is unknown.
	reqJSON := `[["GET","/repos/x"],["GET","/admin"]]`
	run := func() *run {
		return e.execute(asTenant(t, "acme", ""), &executorv1.ExecuteRequest{Code: httpRequestsJS, Args: []string{reqJSON}})
	}
	if r := run(); status.Code(r.err) != codes.PermissionDenied {
		t.Fatalf("acme before it is in the database: %v, want PermissionDenied", r.err)
	}
	quote := func(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
	pg.Exec(t, "INSERT INTO sandpit_tenants (tenant, policy) VALUES ('acme', "+quote(acmePolicy)+")")
	// adminDecision waits until the next execution decides /admin as want.
	adminDecision := func(want policyv1.Decision, rule string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			r := run()
			if r.err == nil && r.result != nil {
				evs := requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST)
				if len(evs) == 2 && evs[1].GetDecision() == want && evs[1].GetRuleId() == rule && evs[1].GetSource() == "tenant" {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("acme's /admin was not %v by %s 20 s after the database changed: %v", want, rule, r.err)
			}
		}
	}
	adminDecision(policyv1.Decision_DECISION_DENY, "hosts[0].default")
	pg.Exec(t, "UPDATE sandpit_tenants SET policy = "+quote(acmeWidened)+" WHERE tenant = 'acme'")
	adminDecision(policyv1.Decision_DECISION_ALLOW, "acme-admin")
	pg.Exec(t, "UPDATE sandpit_tenants SET mode = 'audit', policy = "+quote(acmePolicy)+" WHERE tenant = 'acme'")
	adminDecision(policyv1.Decision_DECISION_WOULD_BLOCK, "hosts[0].default")
}
