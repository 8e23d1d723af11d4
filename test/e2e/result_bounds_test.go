package e2e

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// TestFloodedResultStaysTruthfulAndSmall: a program makes 20,000 requests
// with 4 KB URLs while its caller, a client with gRPC's default 4 MiB
// receive limit, does not read for a while. The Result still arrives, says
// how much of the network log was left out and how many live events were
// dropped, and every request is accounted for.
func TestFloodedResultStaysTruthfulAndSmall(t *testing.T) {
	const n = 20000
	s := startNetStack(t)
	req := code(`
const http2 = require("http2");
const c = http2.connect("https://pay.test");
const long = "/v1/denied/" + "x".repeat(4000);
let next = 0, done = 0, codes = {};
function one() {
  const i = next++;
  const r = c.request({ ":path": long + "?i=" + i });
  r.on("response", h => { codes[h[":status"]] = (codes[h[":status"]] || 0) + 1; });
  r.resume();
  const end = () => { if (++done === ` + itoa(n) + `) { c.close(); console.log(JSON.stringify(codes)); } else if (next < ` + itoa(n) + `) one(); };
  r.on("end", end);
  r.on("error", e => { codes[e.code] = (codes[e.code] || 0) + 1; end(); });
  r.end();
}
for (let k = 0; k < 64; k++) one();
`)
	req.Limits = &executorv1.Limits{Timeout: durationpb.New(3 * time.Minute)}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	stream, err := s.e.client.Execute(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var (
		stdout    []byte
		result    *executorv1.Result
		requests  int
		allEvents int
	)
	for first := true; ; first = false {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream: %v (after %d network events)", err, allEvents)
		}
		if first {
			// A caller that falls behind: the executor must drop live
			// events rather than hold the decision path or grow.
			time.Sleep(5 * time.Second)
		}
		switch x := ev.GetEvent().(type) {
		case *executorv1.ExecuteResponse_Stdout:
			stdout = append(stdout, x.Stdout.GetData()...)
		case *executorv1.ExecuteResponse_Network:
			allEvents++
			if x.Network.GetKind() == executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST {
				requests++
			}
		case *executorv1.ExecuteResponse_Result:
			result = x.Result
		}
	}
	if result == nil {
		t.Fatal("no result")
	}
	if got := strings.TrimSpace(string(stdout)); got != `{"403":20000}` {
		t.Errorf("the program saw %s, want 20000 refusals", got)
	}
	if result.GetRequestsBlocked() != n {
		t.Errorf("requests_blocked %d, want %d", result.GetRequestsBlocked(), n)
	}
	size := proto.Size(result)
	logged := len(result.GetNetworkLog())
	t.Logf("result %d bytes; %d log entries, %d omitted; %d request events received, %d events in all, %d dropped",
		size, logged, result.GetNetworkLogOmitted(), requests, allEvents, result.GetNetworkEventsDropped())
	if size >= 4<<20 {
		t.Errorf("the Result is %d bytes, over a default client's 4 MiB", size)
	}
	if !result.GetNetworkLogTruncated() || logged == 0 || logged+int(result.GetNetworkLogOmitted()) != n {
		t.Errorf("network log: %d entries, %d omitted, truncated %v; want %d in all, truncated",
			logged, result.GetNetworkLogOmitted(), result.GetNetworkLogTruncated(), n)
	}
	for _, l := range result.GetNetworkLog() {
		if len(l.GetUrl()) > 2<<10 || !l.GetBlocked() {
			t.Fatalf("log entry %q (%d bytes, blocked %v): want at most 2 KiB, blocked", l.GetUrl()[:64], len(l.GetUrl()), l.GetBlocked())
		}
	}
	dropped := int(result.GetNetworkEventsDropped())
	if dropped == 0 {
		t.Error("no live event was dropped although the caller did not read for 5s")
	}
	// Every request event was either delivered or counted as dropped (a
	// few DNS events share the count).
	if requests+dropped < n || allEvents+dropped > n+16 {
		t.Errorf("%d request events delivered (%d events in all) and %d dropped, for %d requests", requests, allEvents, dropped, n)
	}
}
