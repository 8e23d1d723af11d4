package e2e

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// floodHeapGrowthBound is the documented bound on the executor's heap
// growth while one sandbox floods it with requests (README: Network log):
// its network log is bounded in entries and bytes, whatever the requests.
const floodHeapGrowthBound = 64 << 20

// TestExecutorMemoryUnderRequestFlood: the executor's resident memory
// stays under a documented bound while one sandbox makes 20,000 requests
// with 400 KB queries, over HTTP/2 on keep-alive connections. The proxy
// refuses every one with 414 (its target bound is 8 KiB) and reports it;
// the executor logs each as blocked within its log's bounds, keeps the
// allowed request made after the flood, and counts what it left out. A
// neighbouring sandbox's allowed requests all succeed meanwhile.
func TestExecutorMemoryUnderRequestFlood(t *testing.T) {
	s := startNetStack(t)
	const n = 20000
	flood := code(`
const http2 = require("http2");
const path = "/v1/anything?q=" + "q".repeat(400000);
const conns = [];
const connect = () => {
  // node refuses to send a header block over 64 KiB unless told otherwise.
  const c = http2.connect("https://api.github.test", { maxSendHeaderBlockLength: 8 << 20 });
  c.on("error", () => {});
  return c;
};
const get = (c, p) => new Promise(res => {
  const q = c.request({ ":path": p });
  let body = "";
  q.on("response", h => { q.on("data", d => body += d); q.on("end", () => {
    let code = ""; try { code = JSON.parse(body).error.code; } catch {}
    res(h[":status"] + " " + code); }); });
  q.on("error", e => res(e.code));
  q.end();
});
(async () => {
  const out = {};
  let next = 0;
  const worker = async () => {
    let c = connect();
    conns.push(c);
    while (next < ` + itoa(n) + `) {
      next++;
      const st = await get(c, path);
      out[st] = (out[st] || 0) + 1;
      if (c.destroyed || c.closed) { c = connect(); conns.push(c); }
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  const c = connect();
  out.after = await get(c, "/after");
  c.close();
  for (const c of conns) c.close();
  console.log(JSON.stringify(out));
})();
`)
	flood.Limits = &executorv1.Limits{Timeout: durationpb.New(4 * time.Minute)}
	nb := startNeighbour(t, s.e)

	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	baseRSS := vmRSS(t)
	stopSampling := heapPeak(20 * time.Millisecond)

	start := time.Now()
	var floodOut []byte
	var floodRes *executorv1.Result
	var floodEvents int
	var floodErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		// Read as the output flood test does: events are counted, not
		// kept, so that what is measured is the executor's memory.
		stream, err := s.e.client.Execute(context.Background(), flood)
		if err != nil {
			floodErr = err
			return
		}
		for {
			ev, err := stream.Recv()
			if err == io.EOF {
				return
			}
			if err != nil {
				floodErr = err
				return
			}
			switch {
			case ev.GetStdout() != nil:
				floodOut = append(floodOut, ev.GetStdout().GetData()...)
			case ev.GetResult() != nil:
				floodRes = ev.GetResult()
			case ev.GetNetwork() != nil:
				floodEvents++
			}
		}
	})
	wg.Wait()
	took := time.Since(start)
	nb.check(t)
	peak := stopSampling()
	peakRSS := vmRSS(t)
	if floodErr != nil || floodRes == nil {
		t.Fatalf("flood: %v, result %v, stdout %s", floodErr, floodRes, floodOut)
	}

	var out map[string]any
	if err := json.Unmarshal(lastLine(floodOut), &out); err != nil {
		t.Fatalf("flood output %q: %v", floodOut, err)
	}
	if got, _ := out["414 ambiguous_request"].(float64); got != n || len(out) != 2 || out["after"] != "200 " {
		t.Errorf("flood statuses %v, want %d × 414 ambiguous_request and the request after it 200", out, n)
	}
	res := floodRes
	var blockedInLog, afterInLog int
	for _, l := range res.GetNetworkLog() {
		switch {
		case l.GetBlocked() && l.GetStatusCode() == 414:
			blockedInLog++
		case !l.GetBlocked() && strings.HasSuffix(l.GetUrl(), "/after"):
			afterInLog++
		}
	}
	if res.GetRequestsBlocked() != n || res.GetRequestsAllowed() != 1 || afterInLog != 1 || blockedInLog == 0 || blockedInLog > 5000 ||
		res.GetNetworkLogOmitted() != uint32(n-blockedInLog) || res.GetNetworkLogOmittedAllowed() != 0 || !res.GetNetworkLogTruncated() {
		t.Errorf("result: %d blocked, %d allowed; log %d entries (%d 414s, the request after the flood %d times), omitted %d (%d allowed), truncated %v",
			res.GetRequestsBlocked(), res.GetRequestsAllowed(), len(res.GetNetworkLog()), blockedInLog, afterInLog,
			res.GetNetworkLogOmitted(), res.GetNetworkLogOmittedAllowed(), res.GetNetworkLogTruncated())
	}
	if used := s.e.app.NetworkLogBytes(); used != 0 {
		t.Errorf("the executions' network logs still hold %d bytes of the global budget", used)
	}

	growth := int64(peak) - int64(base.HeapInuse)
	t.Logf("%d requests of %d KB queries in %.1fs (%.0f/s): %d network events; log %d entries, %d omitted",
		n, 400, took.Seconds(), n/took.Seconds(), floodEvents, len(res.GetNetworkLog()), res.GetNetworkLogOmitted())
	t.Logf("heap in use: base %d MiB, peak %d MiB (growth %d MiB, bound %d MiB); process RSS %d MiB before, %d MiB after",
		base.HeapInuse>>20, peak>>20, growth>>20, floodHeapGrowthBound>>20, baseRSS>>20, peakRSS>>20)
	if growth > floodHeapGrowthBound {
		t.Errorf("the executor's heap grew by %d MiB during the flood, over the bound of %d MiB", growth>>20, floodHeapGrowthBound>>20)
	}
}

// vmRSS is this process's resident set (the executor runs in it).
func vmRSS(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			for _, c := range strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")) {
				kb = kb*10 + int64(c-'0')
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// heapPeak samples this process's heap in use every interval until the
// returned stop is called, which returns the largest value seen.
func heapPeak(interval time.Duration) (stop func() uint64) {
	var peak atomic.Uint64
	done, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(interval):
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-sampled
		return peak.Load()
	}
}
