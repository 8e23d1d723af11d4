package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// mintGateCode opens TLS connections, 16 at a time, to 500 random names
// under a host no rule allows and 3 times to each of three allowed names,
// then makes one allowed request; it prints what each kind of connection
// came to.
const mintGateCode = `
const tls = require("tls"), https = require("https"), crypto = require("crypto");
const connect = name => new Promise(res => {
  const s = tls.connect({ host: "198.18.0.1", port: 443, servername: name, timeout: 15000 }, () => { s.end(); res("connected"); });
  s.on("error", e => res(e.code || e.message)); s.on("timeout", () => { s.destroy(); res("timeout"); });
});
const count = async (names, out) => {
  for (let i = 0; i < names.length; i += 16) {
    for (const r of await Promise.all(names.slice(i, i + 16).map(connect))) out[r] = (out[r] || 0) + 1;
  }
};
(async () => {
  const out = { random: {}, allowed: {} };
  await count(Array.from({ length: 500 }, () => crypto.randomBytes(6).toString("hex") + ".nothing.test"), out.random);
  await count(["pay.test", "api.github.test", "api.stripe.com"].flatMap(n => [n, n, n]), out.allowed);
  out.request = await new Promise(res => {
    const q = https.request({ host: "198.18.0.1", port: 443, servername: "pay.test", path: "/v1/products/p1", headers: { Host: "pay.test" } },
      r => { r.resume(); r.on("end", () => res(r.statusCode)); });
    q.on("error", e => res(e.code)); q.end();
  });
  console.log(JSON.stringify(out));
})();
`

// leavesMinted reads sandpit_egress_leaves_minted_total from the proxy's
// /metrics.
func leavesMinted(t *testing.T, addr string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "sandpit_egress_leaves_minted_total "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
	}
	t.Fatal("no sandpit_egress_leaves_minted_total in /metrics")
	return 0
}

// TestMintOnlyForAllowableNames: a sandbox's TLS connections to 500 random
// names no rule allows are refused at the handshake, each reported once as
// a refused connection whose reason names the server name and says no
// rule allows it; leaves are minted only for the three allowed names (once
// each, however often they are asked for), and an allowed request succeeds.
func TestMintOnlyForAllowableNames(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy)})
	pay := newStandIn(t, "pay.test")
	metrics := "127.0.0.1:" + itoa(freePort(t))
	proxy := startProxy(t, ports, e.deciderAddr, map[string]string{"pay.test": pay.addr()}, upstreamCAPEM(t), "--metrics-listen", metrics)
	e.waitProxy(t, proxy)
	before := leavesMinted(t, metrics)

	r := e.mustRun(t, code(mintGateCode))
	var out struct {
		Random, Allowed map[string]int
		Request         any
	}
	if err := json.Unmarshal(bytes.TrimSpace(r.stdout), &out); err != nil {
		t.Fatalf("output: %v\n%s\nstderr: %s", err, r.stdout, r.stderr)
	}
	minted := leavesMinted(t, metrics) - before
	t.Logf("random names: %v; allowed names: %v; request: %v; leaves minted: %d", out.Random, out.Allowed, out.Request, minted)
	if out.Random["connected"] != 0 || out.Allowed["connected"] != 9 {
		t.Errorf("random names connected %d times (want 0), allowed ones %d (want 9)", out.Random["connected"], out.Allowed["connected"])
	}
	if out.Request != float64(200) {
		t.Errorf("the allowed request got %v, want 200", out.Request)
	}
	if minted != 3 {
		t.Errorf("%d leaves minted, want 3: one per allowed name, none for the 500 others", minted)
	}

	refused := 0
	for _, ev := range r.network {
		if ev.GetKind() != executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED {
			continue
		}
		reason := ev.GetReason()
		if !strings.Contains(reason, ".nothing.test\" refused at the handshake: no rule of the policy could allow https to ") {
			t.Errorf("refused event with reason %q", reason)
			continue
		}
		refused++
	}
	dropped := int(r.result.GetNetworkEventsDropped())
	t.Logf("%d handshake refusals among %d network events, %d events dropped", refused, len(r.network), dropped)
	if refused > 500 || refused+dropped < 500 {
		t.Errorf("%d handshake refusals reported (%d events dropped), want one for each of the 500 names", refused, dropped)
	}
	if n := len(r.result.GetNetworkLog()); n != 1 {
		t.Errorf("network log of %d entries, want the one request: the gate logs nothing", n)
	}
}
