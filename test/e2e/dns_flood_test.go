package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// unpacedFloodCode sends DNS queries for an allowed name to the gateway as
// fast as node can for %d ms, then prints how many it sent and how many
// answers came back.
const unpacedFloodCode = `
const dgram = require("dgram"), os = require("os");
const gw = os.networkInterfaces().eth0.find(a => a.family === "IPv4").address.replace(/\.\d+$/, m => "." + (Number(m.slice(1)) - 1));
const labels = Buffer.concat(["pay", "test"].map(l => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])));
const query = id => { const h = Buffer.alloc(12); h.writeUInt16BE(id, 0); h.writeUInt16BE(0x0100, 2); h.writeUInt16BE(1, 4); return Buffer.concat([h, labels, Buffer.from([0, 0, 1, 0, 1])]); };
const out = { sent: 0, answers: 0 };
const s = dgram.createSocket("udp4");
s.on("message", () => out.answers++);
s.on("error", () => {});
const end = Date.now() + %d;
const burst = () => {
  for (let i = 0; i < 500; i++) s.send(query(out.sent++ & 0xffff), 53, gw);
  if (Date.now() < end) setImmediate(burst);
  else setTimeout(() => { out.seconds = %d / 1000; console.log(JSON.stringify(out)); process.exit(0); }, 1000);
};
s.bind(() => { console.log("flooding"); burst(); });
`

// TestUnpacedDNSFloodIsMeteredInTheKernel: one sandbox sends UDP DNS as
// fast as it can (tens of thousands a second, enough to overflow the
// proxy's one UDP socket); nftables passes at most --dns-packet-rate a
// second of it, so its answers are bounded by that, and a neighbour's
// lookups and requests made meanwhile all succeed within 3x their idle
// latency + 1 s.
func TestUnpacedDNSFloodIsMeteredInTheKernel(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	s := &netStack{e: startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy)}), pay: newStandIn(t, "pay.test")}
	s.proxy = startProxy(t, ports, s.e.deciderAddr, map[string]string{"pay.test": s.pay.addr()}, upstreamCAPEM(t), fairLimits...)
	s.e.waitProxy(t, s.proxy)
	nb := startNeighbour(t, s.e)

	const floodMs = 4000
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req := code(fmt.Sprintf(unpacedFloodCode, floodMs, floodMs))
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(30 * time.Second)}
	flood, err := s.e.client.Execute(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := stdoutUntil(t, flood, "flooding")
	var stdout strings.Builder
	stdout.WriteString(first)
	var result *executorv1.Result
	for {
		ev, err := flood.Recv()
		if err != nil {
			break
		}
		stdout.Write(ev.GetStdout().GetData())
		if r := ev.GetResult(); r != nil {
			result = r
		}
	}
	var fo struct {
		Sent, Answers int
		Seconds       float64
	}
	// Every round of the neighbour while the sandbox flooded, at least as
	// many as its idle rounds.
	if f := nb.check(t); f.Busy < neighbourIdleRounds {
		t.Errorf("the neighbour made %d rounds during the flood, want at least %d", f.Busy, neighbourIdleRounds)
	}
	lastJSON(t, &run{stdout: []byte(stdout.String()), result: result}, &fo)
	t.Logf("flood: %d queries in %.0f s (%.0f/s), %d answered", fo.Sent, fo.Seconds, float64(fo.Sent)/fo.Seconds, fo.Answers)
	if fo.Sent < 20_000 {
		t.Fatalf("the flooder sent only %d queries: not a flood", fo.Sent)
	}
	// The kernel passes a burst plus the rate for the flood and the wait
	// after it; the proxy answers at most what it receives.
	if most := int(1000 + 1000*(fo.Seconds+1)*1.1); fo.Answers > most {
		t.Errorf("the flooder got %d answers, want at most %d (the kernel's per-sandbox rate)", fo.Answers, most)
	}
}
