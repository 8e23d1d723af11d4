package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// floodCode floods UDP 53 with queries for an allowed name and keeps 32
// HTTPS requests to an allowed stand-in going back to back, for %d ms, and
// counts what came back. The flood is paced at up to 25 queries a
// millisecond (9,000-13,000/s here, 100 times the per-source rate), so
// that the proxy's own limits answer most of it; an unpaced flood, which
// the executor's nftables meter cuts before the proxy, is
// TestUnpacedDNSFloodIsMeteredInTheKernel's.
const floodCode = `
const dgram = require("dgram"), https = require("https"), os = require("os");
const gw = os.networkInterfaces().eth0.find(a => a.family === "IPv4").address.replace(/\.\d+$/, m => "." + (Number(m.slice(1)) - 1));
const query = id => {
  const labels = Buffer.concat(["pay", "test"].map(l => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])));
  const h = Buffer.alloc(12); h.writeUInt16BE(id, 0); h.writeUInt16BE(0x0100, 2); h.writeUInt16BE(1, 4);
  return Buffer.concat([h, labels, Buffer.from([0, 0, 1, 0, 1])]);
};
const out = { sent: 0, rcodes: {}, http: {} };
const s = dgram.createSocket("udp4");
s.on("message", m => { const rc = m[3] & 0xf; out.rcodes[rc] = (out.rcodes[rc] || 0) + 1; });
const end = Date.now() + %d;
const agent = new https.Agent({ keepAlive: true, maxSockets: 32 });
const get = () => new Promise(res => {
  const q = https.request({ host: "198.18.0.1", port: 443, servername: "pay.test", path: "/v1/products/p1",
    headers: { Host: "pay.test" }, agent, timeout: 15000 }, r => { r.resume(); r.on("end", () => res(String(r.statusCode))); });
  q.on("error", e => res(e.code)); q.on("timeout", () => { q.destroy(); res("timeout"); }); q.end();
});
const loop = async () => { while (Date.now() < end) { const c = await get(); out.http[c] = (out.http[c] || 0) + 1; } };
const burst = () => {
  for (let i = 0; i < 25; i++) s.send(query(out.sent++ & 0xffff), 53, gw);
  if (Date.now() < end) setTimeout(burst, 1);
};
s.bind(() => {
  console.log("flooding");
  burst();
  Promise.all(Array.from({ length: 32 }, loop)).then(() => setTimeout(() => {
    out.seconds = %d / 1000;
    console.log(JSON.stringify(out));
    process.exit(0);
  }, 1000));
});
`

// fairLimits are the proxy's per-source HTTP limits at their defaults
// (decide.DefaultHTTPRate, ...), which startProxy turns off.
var fairLimits = []string{"--http-rate", "100", "--http-burst", "200", "--http-in-flight", "64"}

// TestFloodingSandboxDoesNotStarveItsNeighbour floods the proxy's DNS and
// HTTP from one sandbox; a neighbour's lookups and requests made meanwhile
// all succeed, each within 3x its idle latency + 1s, and the flooder is
// refused with the rate-limit reason.
func TestFloodingSandboxDoesNotStarveItsNeighbour(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	s := &netStack{e: startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy)}), pay: newStandIn(t, "pay.test")}
	s.proxy = startProxy(t, ports, s.e.deciderAddr, map[string]string{"pay.test": s.pay.addr()}, upstreamCAPEM(t), fairLimits...)
	s.e.waitProxy(t, s.proxy)
	nb := startNeighbour(t, s.e)

	const floodMs = 8000
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req := code(fmt.Sprintf(floodCode, floodMs, floodMs))
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(30 * time.Second)}
	flood, err := s.e.client.Execute(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	type floodOut struct {
		Sent    int            `json:"sent"`
		Rcodes  map[string]int `json:"rcodes"`
		HTTP    map[string]int `json:"http"`
		Seconds float64        `json:"seconds"`
	}
	var fo floodOut
	var floodEvents []*executorv1.NetworkEvent
	var floodResult *executorv1.Result
	flooding := make(chan struct{})
	floodDone := make(chan error, 1)
	var stdout strings.Builder
	go func() {
		started := false
		for {
			ev, err := flood.Recv()
			if err == io.EOF {
				floodDone <- nil
				return
			}
			if err != nil {
				floodDone <- err
				return
			}
			if n := ev.GetNetwork(); n != nil {
				floodEvents = append(floodEvents, n)
			}
			if r := ev.GetResult(); r != nil {
				floodResult = r
			}
			if o := ev.GetStdout(); o != nil {
				stdout.Write(o.GetData())
				if !started && strings.Contains(stdout.String(), "flooding") {
					started = true
					close(flooding)
				}
			}
		}
	}()
	select {
	case <-flooding:
	case err := <-floodDone:
		t.Fatalf("flooder ended before flooding: %v\n%s", err, stdout.String())
	}
	if err := <-floodDone; err != nil {
		t.Fatalf("flooder: %v", err)
	}
	// Every round of the neighbour while the sandbox flooded, at least as
	// many as its idle rounds.
	if f := nb.check(t); f.Busy < neighbourIdleRounds {
		t.Errorf("the neighbour made %d rounds during the flood, want at least %d", f.Busy, neighbourIdleRounds)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &fo); err != nil {
		t.Fatalf("flooder output: %v\n%s", err, stdout.String())
	}
	t.Logf("flooder: %d queries in %.0fs (%.0f/s), rcodes %v, http %v", fo.Sent, fo.Seconds, float64(fo.Sent)/fo.Seconds, fo.Rcodes, fo.HTTP)

	if fo.Sent < 5000 {
		t.Errorf("flooder sent only %d queries: not a flood", fo.Sent)
	}
	if fo.Rcodes["5"] == 0 {
		t.Errorf("no flooding query got REFUSED: rcodes %v", fo.Rcodes)
	}
	if fo.HTTP["429"] == 0 {
		t.Errorf("no flooding request got 429: %v", fo.HTTP)
	}
	limited := 0
	for _, ev := range floodEvents {
		if ev.GetKind() == executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED && strings.HasPrefix(ev.GetReason(), "rate limited: ") {
			limited++
			if ev.GetDenialCode() != policyv1.DenialCode_DENIAL_CODE_RATE_LIMITED {
				t.Errorf("rate-limited refusal event %v, want rate_limited", ev)
			}
		}
	}
	if limited == 0 {
		t.Errorf("no rate-limited refusal among the flooder's %d network events", len(floodEvents))
	}
	t.Logf("flooder: %d rate-limit refusal events, result %v", limited, floodResult.GetExitCode())
	if floodResult == nil {
		t.Error("flooder has no result")
	}
}
