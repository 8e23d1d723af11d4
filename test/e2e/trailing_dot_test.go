package e2e

import (
	"strings"
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// TestTrailingDotHostIsDecidedAsCanonical: "https://PAY.TEST./" works
// from a sandbox through fetch, https and WebSocket, and is decided as
// pay.test. Node would send the trailing dot in its SNI, which Go's TLS
// server cannot parse (RFC 6066 forbids it); the script the executor has
// node load first drops it from the server name, as curl does, and the
// proxy canonicalises the Host header. A ClientHello that still carries
// the dot (written by hand over a plain socket) is refused with a reason
// that names the name to use.
func TestTrailingDotHostIsDecidedAsCanonical(t *testing.T) {
	s := startWedgeStack(t)
	r := s.e.mustRun(t, code(`
const https = require("node:https"), net = require("node:net");
const get = u => fetch(u).then(r => String(r.status), e => (e.cause && e.cause.code) || e.name);
const hget = u => new Promise(res => https.get(u, r => { r.resume(); res(String(r.statusCode)); }).on("error", e => res(e.code)));
const ws = u => new Promise(res => { const w = new WebSocket(u); w.onopen = () => res("open"); w.onerror = () => res("error"); });
// A ClientHello for "pay.test." written by hand: TLS 1.2, one cipher suite,
// only the server_name extension.
const rawHello = () => new Promise(res => {
  const name = Buffer.from("pay.test.");
  const sni = Buffer.concat([Buffer.from([0, 0]), u16(name.length + 5), u16(name.length + 3), Buffer.from([0]), u16(name.length), name]);
  const body = Buffer.concat([Buffer.from([3, 3]), Buffer.alloc(32, 7), Buffer.from([0]), u16(2), Buffer.from([0xc0, 0x2f]), Buffer.from([1, 0]), u16(sni.length), sni]);
  const hs = Buffer.concat([Buffer.from([1, 0]), u16(body.length), body]);
  const c = net.connect(443, "198.18.0.1", () => c.write(Buffer.concat([Buffer.from([0x16, 3, 1]), u16(hs.length), hs])));
  c.on("data", () => {}); c.on("close", () => res("closed")); c.on("error", e => res(e.code));
});
function u16(n) { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; }
(async () => {
  console.log(await get("https://PAY.TEST./v1/products/fetch"), await hget("https://pay.test./v1/products/https"),
    await get("https://pay.test/v1/products/plain"), await ws("wss://pay.test./v1/products/ws"), await rawHello());
})();
`))
	out := strings.Fields(strings.TrimSpace(string(r.stdout)))
	// The WebSocket upgrade is decided and denied (no rule allows
	// upgrades): what matters is that it got past TLS to a decision.
	if len(out) != 5 || out[0] != "200" || out[1] != "200" || out[2] != "200" || out[3] != "error" {
		t.Fatalf("output %q (stderr %s): want 200 200 200 for fetch, https and the plain name, and the WebSocket denied", r.stdout, r.stderr)
	}
	got := s.pay.requests()
	for _, want := range []string{"/v1/products/fetch", "/v1/products/https", "/v1/products/plain"} {
		if !slicesContains(got, want) {
			t.Errorf("pay.test got %q, want a request for %s", got, want)
		}
	}
	if len(got) != 3 {
		t.Errorf("pay.test got %q, want exactly the three GETs (not the upgrade)", got)
	}
	decided := map[string]string{}
	for _, ev := range requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST) {
		decided[ev.GetUrl()] = ev.GetHost() + " " + ev.GetDecision().String()
	}
	for _, p := range []string{"fetch", "https", "plain"} {
		u := "https://pay.test/v1/products/" + p
		if decided[u] != "pay.test DECISION_ALLOW" {
			t.Errorf("%s decided %q, want pay.test allowed (events %v)", u, decided[u], decided)
		}
	}
	if d := decided["https://pay.test/v1/products/ws"]; d != "pay.test DECISION_DENY" {
		t.Errorf("the WebSocket upgrade decided %q, want pay.test denied (events %v)", d, decided)
	}
	var reasons []string
	for _, ev := range requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED) {
		reasons = append(reasons, ev.GetReason())
	}
	if len(reasons) != 1 || !strings.Contains(reasons[0], `"pay.test." ends with a dot`) || !strings.Contains(reasons[0], `use "pay.test"`) {
		t.Fatalf("refusals %q: want one, of the hand-written hello, naming the dot and the canonical name", reasons)
	}
}

func slicesContains(got []string, sub string) bool {
	for _, g := range got {
		if strings.Contains(g, sub) {
			return true
		}
	}
	return false
}
