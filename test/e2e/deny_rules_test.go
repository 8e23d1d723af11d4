package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// denyRulesPolicy has a deny rule inside a host that allows by default:
// the case where a variant of the denied path the rule missed would be
// forwarded.
const denyRulesPolicy = `
version: 1
default: deny
hosts:
  - host: api.github.test
    rules:
      - { id: no-delete-repo, methods: [POST], path: /repos/delete, action: deny, reason: "deleting repositories is not allowed" }
    default: allow
  - host: pay.test
    default: allow
`

// startPolicyStack is startNetStack with another operator policy and the
// proxy's further flags.
func startPolicyStack(t *testing.T, policyYAML string, proxyFlags ...string) (*netStack, string) {
	t.Helper()
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	eo := startEgress(t, ports, policyYAML)
	s := &netStack{execLogs: &lockedBuffer{}}
	s.e = startExecutor(t, executorOpts{egress: eo, logs: s.execLogs})
	s.pay = newStandIn(t, "pay.test")
	s.github = newStandIn(t, "api.github.test")
	s.proxy = startProxy(t, ports, s.e.deciderAddr, map[string]string{
		"pay.test":        s.pay.addr(),
		"api.github.test": s.github.addr(),
	}, upstreamCAPEM(t), proxyFlags...)
	s.e.waitProxy(t, s.proxy)
	return s, eo.policyFile
}

// TestDenyRuleVariantsFromSandbox sends, from a real sandbox through the
// real proxy, the variants of a denied path that servers route to the same
// handler, and a request to another port of the allowed host: each is
// blocked with the rule that caught it, none reaches the upstream, and a
// neighbouring sandbox's allowed requests succeed meanwhile.
func TestDenyRuleVariantsFromSandbox(t *testing.T) {
	s, _ := startPolicyStack(t, denyRulesPolicy)
	nb := startNeighbour(t, s.e)
	type answer struct{ Status, Rule, Reason string }
	var got map[string]answer
	probe(t, s.e, code(`
const ask = (url, method) => fetch(url, { method, body: method === "POST" ? "x=1" : undefined })
  .then(async r => { const b = await r.text(); let j = {}; try { j = JSON.parse(b); } catch {} return { status: String(r.status), rule: j.rule || "", reason: j.reason || "" }; },
        e => ({ status: (e.cause && e.cause.code) || e.name }));
(async () => {
  const out = {};
  for (const p of ["/repos/delete", "/repos/delete/", "/Repos/Delete", "/REPOS/DELETE/", "/repos/delete%20", "/repos/delete%20/", "/repos/delete;x=1", "/repos;a=b/delete", "/repos/other"]) {
    out["POST " + p] = await ask("https://api.github.test" + p, "POST");
  }
  out["GET /repos/delete/"] = await ask("https://api.github.test/repos/delete/", "GET");
  out["GET :8443"] = await ask("https://api.github.test:8443/other-port", "GET");
  out["GET http"] = await ask("http://api.github.test/plain-http", "GET");
  console.log(JSON.stringify(out));
})();
`), &got)
	tests := []struct {
		key, status, rule, reason string
	}{
		{"POST /repos/delete", "403", "no-delete-repo", "deleting repositories is not allowed"},
		{"POST /repos/delete/", "403", "no-delete-repo", "deleting repositories is not allowed"},
		{"POST /Repos/Delete", "403", "no-delete-repo", "deleting repositories is not allowed"},
		{"POST /REPOS/DELETE/", "403", "no-delete-repo", "deleting repositories is not allowed"},
		{"POST /repos/delete%20", "403", "no-delete-repo", "deleting repositories is not allowed"},
		{"POST /repos/delete%20/", "403", "no-delete-repo", "deleting repositories is not allowed"},
		{"POST /repos/delete;x=1", "403", "hosts[0].path", `has a ";"`},
		{"POST /repos;a=b/delete", "403", "hosts[0].path", `has a ";"`},
		{"GET :8443", "403", "hosts[0].ports", "not 8443"},
		{"GET http", "403", "hosts[0].schemes", "not http"},
		// Neighbours of the denied request stay allowed.
		{"POST /repos/other", "200", "", ""},
		{"GET /repos/delete/", "200", "", ""},
	}
	for _, tt := range tests {
		a := got[tt.key]
		if a.Status != tt.status || a.Rule != tt.rule || !strings.Contains(a.Reason, tt.reason) {
			t.Errorf("%s: %+v, want %s by %q ...%s...", tt.key, a, tt.status, tt.rule, tt.reason)
		}
	}
	for _, r := range s.github.requests() {
		low := strings.ToLower(r)
		if strings.HasPrefix(low, "post") && strings.Contains(low, "/delete") || strings.Contains(r, "other-port") || strings.Contains(r, "plain-http") || strings.Contains(r, ";") {
			t.Errorf("the upstream got a request that was to be blocked: %s", r)
		}
	}
	nb.check(t)
}

// TestPolicyReloadAppliesToRunningSandbox tightens the operator's policy
// file while a sandbox runs: its next requests are decided by the new
// file, its inline policy still narrows, and what the new file allows
// still goes through.
func TestPolicyReloadAppliesToRunningSandbox(t *testing.T) {
	s, file := startPolicyStack(t, denyRulesPolicy)
	inline := &policyv1.Policy{
		DefaultAction: policyv1.Action_ACTION_ALLOW,
		Hosts: []*policyv1.HostPolicy{{
			Host:          "pay.test",
			Rules:         []*policyv1.Rule{{Id: "inline-no", Methods: []string{"GET"}, Path: "/narrowed", Action: policyv1.Action_ACTION_DENY}},
			DefaultAction: policyv1.Action_ACTION_ALLOW,
		}},
	}
	req := code(`
const ask = url => fetch(url).then(async r => { const b = await r.text(); let j = {}; try { j = JSON.parse(b); } catch {} return { status: String(r.status), rule: j.rule || "" }; },
  e => ({ status: (e.cause && e.cause.code) || e.name }));
(async () => {
  const out = { before: await ask("https://api.github.test/reload/first"), narrowedBefore: await ask("https://pay.test/narrowed") };
  const start = Date.now();
  let allowed = 0, last;
  while (Date.now() - start < 30000) {
    last = await ask("https://api.github.test/reload/probe");
    if (last.status !== "200") break;
    allowed++;
    await new Promise(r => setTimeout(r, 100));
  }
  out.after = last;
  out.allowedProbes = String(allowed);
  out.blockedAfterMs = String(Date.now() - start);
  out.stillAllowed = await ask("https://api.github.test/other");
  out.narrowedAfter = await ask("https://pay.test/narrowed");
  out.payAllowed = await ask("https://pay.test/fine");
  console.log(JSON.stringify(out));
})();
`)
	req.Policy = inline
	type answer struct{ Status, Rule string }
	type result struct {
		Before, NarrowedBefore, After, StillAllowed, NarrowedAfter, PayAllowed answer
		AllowedProbes, BlockedAfterMs                                          string
	}
	nb := startNeighbour(t, s.e)
	done := make(chan *run, 1)
	go func() { done <- s.e.execute(context.Background(), req) }()

	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(strings.Join(s.github.requests(), "\n"), "/reload/probe") {
		if time.Now().After(deadline) {
			t.Fatalf("the sandbox's first requests never arrived: %v", s.github.requests())
		}
		time.Sleep(50 * time.Millisecond)
	}
	tightened := strings.Replace(denyRulesPolicy, "    rules:\n", "    rules:\n      - { id: tightened, methods: [GET], path: /reload/**, action: deny, reason: \"tightened by the operator\" }\n", 1)
	tmp := filepath.Join(filepath.Dir(file), "policy.yaml.new")
	if err := os.WriteFile(tmp, []byte(tightened), 0o644); err != nil {
		t.Fatal(err)
	}
	// A later mtime than the first file's whatever the file system's
	// granularity.
	later := time.Now().Add(2 * time.Second)
	if err := os.Chtimes(tmp, later, later); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	written := time.Now()

	var r *run
	select {
	case r = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the sandbox did not finish")
	}
	nb.check(t)
	if r.err != nil {
		t.Fatalf("Execute: %v\nstderr: %s", r.err, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(string(r.stdout)), "\n")
	var got result
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
		t.Fatalf("output %q: %v\nstderr: %s", r.stdout, err, r.stderr)
	}
	t.Logf("reload: %s probes allowed before the block, blocked %s ms after the loop began, execution ended %.1f s after the file was replaced",
		got.AllowedProbes, got.BlockedAfterMs, time.Since(written).Seconds())
	if got.Before.Status != "200" {
		t.Errorf("before the reload: %+v, want 200", got.Before)
	}
	if got.After.Status != "403" || got.After.Rule != "tightened" {
		t.Errorf("after the reload: %+v, want 403 by tightened", got.After)
	}
	if got.StillAllowed.Status != "200" || got.PayAllowed.Status != "200" {
		t.Errorf("what the new file allows: %+v, %+v, want 200s", got.StillAllowed, got.PayAllowed)
	}
	if got.NarrowedBefore != (answer{"403", "inline-no"}) || got.NarrowedAfter != (answer{"403", "inline-no"}) {
		t.Errorf("inline narrowing: before %+v, after %+v, want 403 by inline-no both times", got.NarrowedBefore, got.NarrowedAfter)
	}
	var blockedEvent bool
	for _, ev := range requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST) {
		if strings.HasSuffix(ev.GetUrl(), "/reload/probe") && ev.GetDecision() == policyv1.Decision_DECISION_DENY && ev.GetRuleId() == "tightened" {
			blockedEvent = true
		}
	}
	if !blockedEvent {
		t.Errorf("no network event of the probe blocked by tightened: %v", r.network)
	}
}
