package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// neighbourIdleRounds is how many rounds the neighbour measures before the
// attack; the slowest of them is its idle latency.
const neighbourIdleRounds = 8

// neighbourCode makes rounds of a DNS lookup and an HTTPS request on a
// fresh connection to pay.test (by IP and SNI, so that the request's time
// holds no lookup), and prints each round as a line of JSON as it ends:
// one warm-up round (it may mint pay.test's leaf), the idle rounds, then
// busy rounds 200 ms apart until the test ends the execution. Every
// operator policy of these tests allows GET pay.test/v1/products/**. At
// the pace of the busy rounds the execution's DNS budget (1,000 queries)
// lasts over three minutes; the longest attack here (the memory flood)
// takes 80-100 s.
const neighbourCode = `
const dns = require("dns"), https = require("https");
const get = () => new Promise(res => {
  const q = https.request({ host: "198.18.0.1", port: 443, servername: "pay.test", path: "/v1/products/neighbour",
    headers: { Host: "pay.test" }, agent: false, timeout: 30000 }, r => { r.resume(); r.on("end", () => res(String(r.statusCode))); });
  q.on("error", e => res(e.code)); q.on("timeout", () => { q.destroy(); res("timeout"); }); q.end();
});
const round = async phase => {
  let t = performance.now();
  const lookup = await dns.promises.resolve4("pay.test").then(() => "answered", e => e.code);
  const dnsMs = performance.now() - t;
  t = performance.now();
  const status = await get();
  console.log(JSON.stringify({ phase, dns: dnsMs, http: performance.now() - t, lookup, status }));
};
(async () => {
  await round("warm");
  for (let i = 0; i < %d; i++) await round("idle");
  for (;;) { await round("busy"); await new Promise(r => setTimeout(r, 200)); }
})();
`

// neighbourRound is one round of neighbourCode; at is when its line
// reached the test.
type neighbourRound struct {
	Phase  string  `json:"phase"`
	DNS    float64 `json:"dns"`
	HTTP   float64 `json:"http"`
	Lookup string  `json:"lookup"`
	Status string  `json:"status"`
	at     time.Time
}

func (r neighbourRound) failed() bool { return r.Lookup != "answered" || r.Status != "200" }

// neighbour is a sandbox on the test's stack making allowed requests while
// another sandbox attacks: startNeighbour measures its idle latency and
// returns, the test attacks, check asserts what the neighbour saw meanwhile.
type neighbour struct {
	e        *executor
	cancel   context.CancelFunc
	ended    chan struct{} // closed when the execution's stream ends
	idleDone chan struct{} // closed when the idle rounds are in
	started  time.Time     // when the idle rounds were in: the attack begins after

	mu     sync.Mutex
	rounds []neighbourRound
	err    error // what ended the stream
	stderr strings.Builder
}

// startNeighbour starts the neighbour on e's stack and returns once its
// idle rounds are measured; they must all succeed.
func startNeighbour(t *testing.T, e *executor) *neighbour {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	nb := &neighbour{e: e, cancel: cancel, ended: make(chan struct{}), idleDone: make(chan struct{})}
	t.Cleanup(func() { cancel(); <-nb.ended })
	req := code(fmt.Sprintf(neighbourCode, neighbourIdleRounds))
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(5 * time.Minute)}
	stream, err := e.client.Execute(ctx, req)
	if err != nil {
		close(nb.ended)
		t.Fatalf("neighbour: %v", err)
	}
	go nb.read(stream)
	select {
	case <-nb.idleDone:
	case <-nb.ended:
	case <-time.After(time.Minute):
	}
	nb.mu.Lock()
	defer nb.mu.Unlock()
	if len(nb.rounds) < 1+neighbourIdleRounds {
		t.Fatalf("neighbour: %d of %d idle rounds in (stream: %v)\nstderr: %s", len(nb.rounds), 1+neighbourIdleRounds, nb.err, nb.stderr.String())
	}
	for _, r := range nb.rounds[:1+neighbourIdleRounds] {
		if r.failed() {
			t.Fatalf("neighbour before the attack: %+v, want the lookup answered and 200", r)
		}
	}
	nb.started = time.Now()
	return nb
}

// read collects the neighbour's rounds as their lines arrive.
func (nb *neighbour) read(stream executorv1.ExecutorService_ExecuteClient) {
	defer close(nb.ended)
	var partial string
	for {
		ev, err := stream.Recv()
		if err != nil {
			nb.mu.Lock()
			if err != io.EOF {
				nb.err = err
			}
			nb.mu.Unlock()
			return
		}
		if e := ev.GetStderr(); e != nil {
			nb.mu.Lock()
			nb.stderr.Write(e.GetData())
			nb.mu.Unlock()
		}
		o := ev.GetStdout()
		if o == nil {
			continue
		}
		lines := strings.Split(partial+string(o.GetData()), "\n")
		partial = lines[len(lines)-1]
		now := time.Now()
		nb.mu.Lock()
		for _, l := range lines[:len(lines)-1] {
			r := neighbourRound{Phase: "unparsable " + l, at: now}
			_ = json.Unmarshal([]byte(l), &r)
			nb.rounds = append(nb.rounds, r)
			if len(nb.rounds) == 1+neighbourIdleRounds {
				close(nb.idleDone)
			}
		}
		nb.mu.Unlock()
	}
}

// neighbourFigures are the neighbour's latencies in milliseconds.
type neighbourFigures struct {
	IdleDNS, IdleHTTP, BusyDNS, BusyHTTP float64
	// Busy is how many rounds ended during the attack.
	Busy int
}

// check ends the neighbour (after the test's other executions ended, or
// while they keep running) and asserts that every round since its idle
// phase, during the attack, was answered (the lookup and a 200) and that
// each lookup and each request took at most 3× its idle latency (the
// slowest idle round) + 1 s; so must the round still in flight when the
// attack ended. It logs the figures and returns them.
func (nb *neighbour) check(t *testing.T) neighbourFigures {
	t.Helper()
	var f neighbourFigures
	busy := func() []neighbourRound {
		nb.mu.Lock()
		defer nb.mu.Unlock()
		return append([]neighbourRound(nil), nb.rounds[1+neighbourIdleRounds:]...)
	}
	nb.mu.Lock()
	for _, r := range nb.rounds[1 : 1+neighbourIdleRounds] {
		f.IdleDNS, f.IdleHTTP = max(f.IdleDNS, r.DNS), max(f.IdleHTTP, r.HTTP)
	}
	nb.mu.Unlock()
	dnsBound, httpBound := 3*f.IdleDNS+1000, 3*f.IdleHTTP+1000
	// The first busy round began as the idle ones ended: after an attack
	// shorter than a round, wait for it, up to its bounds.
	for wait := time.Now().Add(time.Duration(dnsBound+httpBound) * time.Millisecond); len(busy()) == 0 && time.Now().Before(wait); {
		time.Sleep(10 * time.Millisecond)
	}
	stopped := time.Now()
	rounds := busy()
	select {
	case <-nb.ended:
		nb.mu.Lock()
		t.Errorf("the neighbour ended before the attack did: %v\nstderr: %s", nb.err, nb.stderr.String())
		nb.mu.Unlock()
	default:
	}
	// The executor ends the cancelled execution on its own time; once its
	// slot is free, all it held (its network, its log's share of the
	// global bound) is released, as after a Result.
	running := nb.e.app.Slots().InFlight()
	nb.cancel()
	<-nb.ended
	for deadline := time.Now().Add(20 * time.Second); nb.e.app.Slots().InFlight() >= running; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the neighbour's execution did not end 20 s after it was cancelled")
		}
	}

	last := nb.started
	for i, r := range rounds {
		f.BusyDNS, f.BusyHTTP = max(f.BusyDNS, r.DNS), max(f.BusyHTTP, r.HTTP)
		f.Busy++
		last = r.at
		switch {
		case r.failed():
			t.Errorf("neighbour round %d during the attack: %+v, want the lookup answered and 200", i, r)
		case r.DNS > dnsBound || r.HTTP > httpBound:
			t.Errorf("neighbour round %d during the attack: lookup %.0f ms, request %.0f ms; bounds (3× idle + 1 s) %.0f ms, %.0f ms",
				i, r.DNS, r.HTTP, dnsBound, httpBound)
		}
	}
	// The round after the last one began at most the pause (200 ms) after
	// it; it must not have been waiting longer than both bounds.
	if inFlight := stopped.Sub(last); inFlight > time.Duration(dnsBound+httpBound+200)*time.Millisecond {
		t.Errorf("a neighbour round was in flight for %s when the attack ended, over its bounds (%.0f ms + %.0f ms)", inFlight.Round(time.Millisecond), dnsBound, httpBound)
	}
	if f.Busy == 0 {
		t.Errorf("no neighbour round ended during the attack (%s)", stopped.Sub(nb.started).Round(time.Millisecond))
	}
	t.Logf("neighbour: idle (%d rounds) lookup %.1f ms, request %.1f ms (slowest); during the attack (%s, %d rounds) lookup max %.1f ms, request max %.1f ms; bounds %.0f ms, %.0f ms",
		neighbourIdleRounds, f.IdleDNS, f.IdleHTTP, stopped.Sub(nb.started).Round(time.Millisecond), f.Busy, f.BusyDNS, f.BusyHTTP, dnsBound, httpBound)
	return f
}
