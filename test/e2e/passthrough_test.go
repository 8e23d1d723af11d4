package e2e

import (
	"crypto/sha256"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// passthroughPolicy is the operator's: pay.test passed through (its
// stand-in keeps its own certificate), api.github.test intercepted.
const passthroughPolicy = `
version: 1
default: deny
hosts:
  - host: pay.test
    passthrough: true
  - host: api.github.test
    default: allow
`

// pinnedJS fetches https://pay.test/pinned trusting the stand-ins' CA and
// the proxy's (so that an intercepted handshake gets as far as the pin),
// and pinning the stand-in's leaf by its SHA-256 fingerprint; the last
// verb adds options (byAddress skips DNS).
const pinnedJS = `
const https = require("https"), tls = require("tls"), fs = require("fs");
const ca = [%q, fs.readFileSync(process.env.NODE_EXTRA_CA_CERTS, "utf8")];
const pin = %q;
const checkServerIdentity = (host, cert) => {
  const err = tls.checkServerIdentity(host, cert);
  if (err) return err;
  if (cert.fingerprint256 !== pin) {
    const e = new Error("certificate mismatch: got " + cert.fingerprint256);
    e.code = "PIN_MISMATCH";
    return e;
  }
};
const q = https.get("https://pay.test/pinned", { agent: false, ca, checkServerIdentity, %s }, r => {
  let body = "";
  r.on("data", d => body += d);
  r.on("end", () => console.log(JSON.stringify({ status: r.statusCode, body })));
});
q.on("error", e => console.log(JSON.stringify({ error: e.code || "", message: e.message })));
`

type pinnedReply struct {
	Status  int    `json:"status"`
	Body    string `json:"body"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

// TestPassthroughPinnedClient runs a node client that pins the stand-in's
// certificate in a real sandbox, through the real proxy: passed through
// it reaches the stand-in and the run reports one CONNECT request and its
// outcome with bytes both ways (and the Result's totals count them); the
// same host intercepted (an inline policy that names it without
// passthrough: the policies disagree) fails on the pin; an audit-mode
// inline policy's denial splices it marked would-block; past what is
// left of a byte total the relay is cut; denied by the
// inline policy, its name is not found and, dialed by address, the
// handshake is refused; nothing more reaches the stand-in. sandpit-check
// (the Check RPC) reports the host passed through, and intercepted under
// the inline policy that names it.
func TestPassthroughPinnedClient(t *testing.T) {
	s := startNetStackWith(t, passthroughPolicy, nil)
	leaf := upstreamCert(t).Certificate[0]
	sum := sha256.Sum256(leaf)
	hexes := make([]string, len(sum))
	for i, b := range sum {
		hexes[i] = fmt.Sprintf("%02X", b)
	}
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: upstreamCA.Raw}))
	js := fmt.Sprintf(pinnedJS, caPEM, strings.Join(hexes, ":"), "")
	// The address every allowed name resolves to (--dns-answer-ip): a
	// connection to it is redirected to the proxy like any other.
	byAddress := fmt.Sprintf(pinnedJS, caPEM, strings.Join(hexes, ":"), `hostname: "198.18.0.1", servername: "pay.test", headers: { host: "pay.test" }`)
	inline := func(host string) *policyv1.Policy {
		return &policyv1.Policy{Hosts: []*policyv1.HostPolicy{{Host: host, DefaultAction: policyv1.Action_ACTION_ALLOW}}}
	}

	t.Run("passed through", func(t *testing.T) {
		var got pinnedReply
		r := probe(t, s.e, code(js), &got)
		if got.Status != 200 || !strings.Contains(got.Body, `"stand_in":"pay.test"`) {
			t.Fatalf("pinned client through pass-through: %+v, want 200 from the pay.test stand-in", got)
		}
		if seen := s.pay.requests(); len(seen) != 1 || !strings.HasPrefix(seen[0], "GET pay.test /pinned") {
			t.Errorf("stand-in saw %q, want the one GET", seen)
		}
		reqs := requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST)
		outs := requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_OUTCOME)
		if len(reqs) != 1 || len(outs) != 1 {
			t.Fatalf("%d request and %d outcome events, want one each: %v", len(reqs), len(outs), r.network)
		}
		ev, o := reqs[0], outs[0]
		if ev.GetMethod() != "CONNECT" || ev.GetUrl() != "https://pay.test:443" || ev.GetDecision() != policyv1.Decision_DECISION_ALLOW ||
			ev.GetRuleId() != "hosts[0].passthrough" || ev.GetSource() != "operator" {
			t.Errorf("request event %v", ev)
		}
		// The bytes each way are TLS records: the handshake (the
		// stand-in's certificate chain among them) and the exchange.
		if o.GetRequestId() != ev.GetRequestId() || o.GetBytesSent() < 100 || o.GetBytesReceived() < uint64(len(leaf)+len(got.Body)) || o.GetDuration().AsDuration() <= 0 {
			t.Errorf("outcome event %v, want the request's, with the handshake and the exchange counted each way", o)
		}
		res := r.result
		if res.GetRequestBytesTotal() != o.GetBytesSent() || res.GetResponseBytesTotal() != o.GetBytesReceived() || res.GetRequestsAllowed() != 1 ||
			len(res.GetNetworkLog()) != 1 || res.GetNetworkLog()[0].GetUrl() != "https://pay.test:443" {
			t.Errorf("Result: bytes %d/%d, allowed %d, log %v; want the outcome's %d/%d and one CONNECT entry",
				res.GetRequestBytesTotal(), res.GetResponseBytesTotal(), res.GetRequestsAllowed(), res.GetNetworkLog(), o.GetBytesSent(), o.GetBytesReceived())
		}
		t.Logf("pass-through: %d bytes sent, %d received, in %v", o.GetBytesSent(), o.GetBytesReceived(), o.GetDuration().AsDuration())
	})

	t.Run("intercepted", func(t *testing.T) {
		req := code(js)
		req.Policy = inline("pay.test")
		var got pinnedReply
		r := probe(t, s.e, req, &got)
		if got.Error != "PIN_MISMATCH" {
			t.Errorf("pinned client, host intercepted: %+v, want the pin to fail (certificate mismatch)", got)
		}
		if n := len(s.pay.requests()); n != 1 {
			t.Errorf("the stand-in saw %d requests, want still the one", n)
		}
		for _, ev := range r.network {
			if ev.GetMethod() == "CONNECT" {
				t.Errorf("an intercepted connection was recorded as a pass-through: %v", ev)
			}
		}
	})

	t.Run("audit", func(t *testing.T) {
		// An audit-mode inline policy that does not name the host: the
		// pass-through would be blocked, so it is spliced and marked.
		req := code(js)
		req.Policy = inline("api.github.test")
		req.Policy.Mode = policyv1.Mode_MODE_AUDIT
		var got pinnedReply
		r := probe(t, s.e, req, &got)
		if got.Status != 200 {
			t.Errorf("pinned client, pass-through would-block: %+v, want 200", got)
		}
		reqs := requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST)
		if len(reqs) != 1 || reqs[0].GetMethod() != "CONNECT" || reqs[0].GetDecision() != policyv1.Decision_DECISION_WOULD_BLOCK ||
			reqs[0].GetSource() != "inline" || reqs[0].GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED {
			t.Errorf("request events %v, want one CONNECT marked would-block by the inline policy", reqs)
		}
		if r.result.GetRequestsWouldBlock() != 1 {
			t.Errorf("Result: %d would-block, want 1", r.result.GetRequestsWouldBlock())
		}
		if n := len(s.pay.requests()); n != 2 {
			t.Errorf("the stand-in saw %d requests, want 2", n)
		}
	})

	t.Run("budget", func(t *testing.T) {
		// A total the handshake alone passes (the stand-in's certificate
		// chain): the relay is cut at it, and the Result counts exactly it.
		req := code(js)
		req.Policy = &policyv1.Policy{Hosts: []*policyv1.HostPolicy{{Host: "pay.test", Passthrough: true}},
			Limits: &policyv1.PolicyLimits{MaxTotalResponseBytes: 1000}}
		var got pinnedReply
		r := probe(t, s.e, req, &got)
		if got.Status != 0 || got.Error == "" {
			t.Errorf("pinned client over the response total: %+v, want the connection cut", got)
		}
		outs := requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_OUTCOME)
		want := "pass-through cut: the upstream sent more than 1000 bytes (limits.max_total_response_bytes)"
		if len(outs) != 1 || outs[0].GetError() != want || outs[0].GetBytesReceived() != 1000 || r.result.GetResponseBytesTotal() != 1000 {
			t.Errorf("outcomes %v, Result response bytes %d; want one cut at 1000: %q", outs, r.result.GetResponseBytesTotal(), want)
		}
		t.Logf("budget: the client got %s after 1000 bytes", got.Error)
	})

	t.Run("not allowed", func(t *testing.T) {
		req := code(js)
		req.Policy = inline("api.github.test")
		var got pinnedReply
		r := probe(t, s.e, req, &got)
		if got.Error != "ENOTFOUND" {
			t.Errorf("pinned client, host denied: %+v, want its name not found", got)
		}
		if dns := requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_DNS); len(dns) == 0 || dns[0].GetDecision() != policyv1.Decision_DECISION_DENY ||
			dns[0].GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED {
			t.Errorf("DNS events %v, want pay.test denied, host_not_allowed", dns)
		}
		// Skipping DNS, the connection is refused at the handshake.
		req = code(byAddress)
		req.Policy = inline("api.github.test")
		r = probe(t, s.e, req, &got)
		if got.Status != 0 || got.Error == "" || got.Error == "PIN_MISMATCH" {
			t.Errorf("pinned client by address, host denied: %+v, want the connection refused", got)
		}
		refused := requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED)
		if len(refused) != 1 || !strings.Contains(refused[0].GetReason(), `TLS server name "pay.test" refused at the handshake`) ||
			refused[0].GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST {
			t.Errorf("refused events %v, want the handshake's, ambiguous_request", refused)
		}
		for _, ev := range r.network {
			if ev.GetMethod() == "CONNECT" {
				t.Errorf("a refused pass-through was recorded as a request: %v", ev)
			}
		}
		if n := len(s.pay.requests()); n != 2 {
			t.Errorf("the stand-in saw %d requests, want still 2", n)
		}
		t.Logf("refused: by name %s, by address %s", "ENOTFOUND", got.Error)
	})

	// sandpit-check says what the runs above saw: pay.test passed through
	// by the operator's entry, intercepted under an inline policy that
	// names it, api.github.test intercepted.
	t.Run("check", func(t *testing.T) {
		cli, err := containerdtest.Artifact("SANDPIT_CHECK", "bin/sandpit-check")
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(cli, "-addr", s.e.addr, "GET", "https://pay.test/pinned", "GET", "https://api.github.test/").CombinedOutput()
		if err != nil || !regexp.MustCompile(`(?m)^allow +passthrough +GET +https://pay\.test/pinned +hosts\[0\]\.passthrough +operator`).Match(out) ||
			!regexp.MustCompile(`(?m)^allow +intercept +GET +https://api\.github\.test/ `).Match(out) {
			t.Errorf("sandpit-check: %v\n%s\nwant pay.test passed through by hosts[0].passthrough, api.github.test intercepted", err, out)
		}
		names := filepath.Join(t.TempDir(), "inline.yaml")
		if err := os.WriteFile(names, []byte("version: 1\nhosts:\n  - host: pay.test\n    default: allow\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err = exec.Command(cli, "-addr", s.e.addr, "-policy", names, "GET", "https://pay.test/pinned").CombinedOutput()
		if err != nil || !regexp.MustCompile(`(?m)^allow +intercept +GET +https://pay\.test/pinned `).Match(out) {
			t.Errorf("sandpit-check with an inline policy naming pay.test: %v\n%s\nwant it intercepted", err, out)
		}
	})
}
