package e2e

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/daemon/relaytest"
)

// TestCutDecisionPathFailsFast drops the bytes between the proxy and the
// executor's decision listener (nothing closed): ten attempts of a
// sandbox, DNS lookups and HTTPS requests by IP and Host to an allowed
// stand-in, are all refused within 3s in total, with the unavailable
// reason; once the path carries bytes again the same requests are
// allowed, with no manual step. No neighbour (startNeighbour) runs here:
// every sandbox's decisions take the one cut path, so a neighbour's
// requests are refused too, as fail-closed wants.
func TestCutDecisionPathFailsFast(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy)})
	pay := newStandIn(t, "pay.test")
	hole := relaytest.Start(t, e.deciderAddr)
	px := startProxy(t, ports, hole.Addr, map[string]string{"pay.test": pay.addr()}, upstreamCAPEM(t), fairLimits...)
	e.waitProxy(t, px)

	req := code(`
const dns = require("dns"), https = require("https");
const lookup = () => dns.promises.resolve4("pay.test").then(a => "answered " + a, e => e.code);
const get = () => new Promise(res => {
  const q = https.request({ host: "198.18.0.1", port: 443, servername: "pay.test", path: "/v1/products/p1",
    headers: { Host: "pay.test" }, timeout: 10000 }, r => {
    let body = ""; r.on("data", d => body += d);
    r.on("end", () => { let reason = ""; try { reason = JSON.parse(body).reason || ""; } catch {} res(r.statusCode + " " + reason); });
  });
  q.on("error", e => res(e.code)); q.on("timeout", () => { q.destroy(); res("timeout"); }); q.end();
});
const attempt = i => i % 2 === 0 ? lookup() : get();
(async () => {
  const out = { cut: [] };
  const start = performance.now();
  for (let i = 0; i < 10; i++) out.cut.push(await attempt(i));
  out.cutMs = performance.now() - start;
  console.log(JSON.stringify(out));
  // The test restores the path when it reads the line above; retry
  // until allowed.
  const back = performance.now();
  for (;;) {
    const d = await lookup(), h = await get();
    if (d.startsWith("answered") && h.startsWith("200")) { console.log(JSON.stringify({ restored: [d, h], restoredMs: performance.now() - back })); break; }
    await new Promise(r => setTimeout(r, 100));
  }
})();
`)
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(40 * time.Second)}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hole.Pause()
	stream, err := e.client.Execute(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var cut struct {
		Cut   []string `json:"cut"`
		CutMs float64  `json:"cutMs"`
	}
	var restored struct {
		Restored   []string `json:"restored"`
		RestoredMs float64  `json:"restoredMs"`
	}
	var stdout strings.Builder
	var network []*executorv1.NetworkEvent
	var result *executorv1.Result
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("execute: %v\nstdout: %s\nproxy: %s", err, stdout.String(), px.logs.String())
		}
		if n := ev.GetNetwork(); n != nil {
			network = append(network, n)
		}
		if res := ev.GetResult(); res != nil {
			result = res
		}
		o := ev.GetStdout()
		if o == nil {
			continue
		}
		stdout.Write(o.GetData())
		for _, line := range strings.Split(strings.TrimSpace(string(o.GetData())), "\n") {
			switch {
			case strings.HasPrefix(line, `{"cut"`):
				if err := json.Unmarshal([]byte(line), &cut); err != nil {
					t.Fatal(err)
				}
				// The attempts are in: let bytes through again.
				hole.Resume()
			case strings.HasPrefix(line, `{"restored"`):
				if err := json.Unmarshal([]byte(line), &restored); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	t.Logf("cut: %d attempts in %.0fms: %q; restored after %.0fms: %q", len(cut.Cut), cut.CutMs, cut.Cut, restored.RestoredMs, restored.Restored)
	if len(cut.Cut) != 10 {
		t.Fatalf("attempts while cut: %q\nstdout: %s", cut.Cut, stdout.String())
	}
	if cut.CutMs > 3000 {
		t.Errorf("10 attempts on the cut path took %.0fms, want them all refused within 3s", cut.CutMs)
	}
	for i, a := range cut.Cut {
		if i%2 == 0 {
			if a != "ENOTFOUND" {
				t.Errorf("lookup %d on the cut path: %s, want ENOTFOUND (NXDOMAIN)", i, a)
			}
		} else if !strings.HasPrefix(a, "403 policy decision unavailable: ") {
			t.Errorf("request %d on the cut path: %q, want 403 with the unavailable reason", i, a)
		}
	}
	if len(restored.Restored) != 2 {
		t.Fatalf("never allowed again after the path came back\nstdout: %s\nproxy: %s", stdout.String(), px.logs.String())
	}
	if result == nil || result.GetExitCode() != 0 {
		t.Errorf("result: %v", result)
	}
	// Once restored, the executor sees the requests again and says they
	// were allowed.
	allowed := 0
	for _, n := range network {
		if n.GetKind() == executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST && n.GetHost() == "pay.test" && n.GetDecision().String() == "DECISION_ALLOW" {
			allowed++
		}
	}
	if allowed == 0 {
		t.Errorf("no allowed pay.test request in the events after the path came back: %v", network)
	}
	if !strings.Contains(px.logs.String(), "decide stream stalled") {
		t.Errorf("the proxy did not log the stall:\n%s", px.logs.String())
	}
}
