package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// budgetStandIn plays api.github.test for the budget tests and counts
// what reached it: /echo reads the body and answers 1000 bytes, /size/N
// answers N bytes with a Content-Length, /chunked/N N bytes chunked in two
// flushes, /hold one byte at once and 99 more after holdFor; anything else
// a small body.
type budgetStandIn struct {
	mu        sync.Mutex
	bodyBytes int64
	paths     []string
}

const holdFor = 3 * time.Second

func (s *budgetStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	s.mu.Lock()
	s.bodyBytes += n
	s.paths = append(s.paths, r.URL.Path)
	s.mu.Unlock()
	size := func(prefix string) int {
		v, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, prefix))
		return v
	}
	switch {
	case r.URL.Path == "/echo":
		w.Header().Set("Content-Length", "1000")
		io.WriteString(w, strings.Repeat("e", 1000))
	case strings.HasPrefix(r.URL.Path, "/size/"):
		w.Header().Set("Content-Length", strconv.Itoa(size("/size/")))
		io.WriteString(w, strings.Repeat("s", size("/size/")))
	case strings.HasPrefix(r.URL.Path, "/chunked/"):
		half := size("/chunked/") / 2
		io.WriteString(w, strings.Repeat("c", half))
		w.(http.Flusher).Flush()
		io.WriteString(w, strings.Repeat("c", size("/chunked/")-half))
	case r.URL.Path == "/hold":
		io.WriteString(w, "h")
		w.(http.Flusher).Flush()
		select {
		case <-time.After(holdFor):
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, strings.Repeat("h", 99))
	default:
		io.WriteString(w, `{"ok":true}`)
	}
}

func (s *budgetStandIn) seen(path string) (n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.paths {
		if p == path {
			n++
		}
	}
	return n
}

// budgetJS is the sandbox's client: req answers status, body bytes
// received (n), Retry-After, the body of a refusal, and cut when the
// response ended before its end.
const budgetJS = `
const https = require("https");
const sleep = ms => new Promise(r => setTimeout(r, ms));
const req = (method, path, size) => new Promise(res => {
  const headers = size === undefined ? {} : { "content-length": size };
  const q = https.request("https://api.github.test" + path, { method, headers, agent: false }, r => {
    let n = 0, body = "";
    r.on("data", d => { n += d.length; if (r.statusCode !== 200) body += d; });
    r.on("end", () => res({ status: r.statusCode, n, retry: r.headers["retry-after"] || "", body: body.trim() }));
    r.on("close", () => res({ status: r.statusCode, n, cut: !r.complete }));
    r.on("error", e => res({ status: r.statusCode, n, cut: true, error: e.code || e.message }));
  });
  q.on("error", e => res({ error: e.code || e.message }));
  if (size) q.write(Buffer.alloc(size, 120));
  q.end();
});
`

type budgetReply struct {
	Status int    `json:"status"`
	N      int    `json:"n"`
	Retry  string `json:"retry"`
	Body   string `json:"body"`
	Cut    bool   `json:"cut"`
	Error  string `json:"error"`
}

func githubPolicy(rules []*policyv1.Rule, limits *policyv1.PolicyLimits) *policyv1.Policy {
	return &policyv1.Policy{
		Hosts:  []*policyv1.HostPolicy{{Host: "api.github.test", Rules: rules, DefaultAction: policyv1.Action_ACTION_ALLOW}},
		Limits: limits,
	}
}

// TestEgressBudgets runs code in a real sandbox against each budget of an
// inline policy, through the real proxy to a local stand-in: past each
// bound the sandbox gets the refusal the budget promises (429 with a
// truthful Retry-After for a rate and the concurrency limit, 403 naming
// the total, a response cut short), and the Result's figures are what the
// stand-in and the sandbox saw.
func TestEgressBudgets(t *testing.T) {
	up := &budgetStandIn{}
	s := startNetStackWith(t, basePolicy, up)

	t.Run("rate", func(t *testing.T) {
		req := code(budgetJS + `
(async () => {
  const t0 = Date.now();
  const all = await Promise.all([...Array(6)].map(() => req("GET", "/rated")));
  const spread = Date.now() - t0;
  const retry = Math.max(0, ...all.filter(r => r.status === 429).map(r => +r.retry));
  await sleep(retry * 1000);
  const after = await req("GET", "/rated");
  console.log(JSON.stringify({ all, spread, retry, after }));
})();
`)
		req.Policy = githubPolicy([]*policyv1.Rule{{Id: "rated", Path: "/rated", Action: policyv1.Action_ACTION_ALLOW, Rate: &policyv1.RuleRate{PerSecond: 1, Burst: 3}}}, nil)
		var got struct {
			All    []budgetReply `json:"all"`
			Spread int           `json:"spread"`
			Retry  int           `json:"retry"`
			After  budgetReply   `json:"after"`
		}
		r := probe(t, s.e, req, &got)
		ok, limited := 0, 0
		for _, a := range got.All {
			switch a.Status {
			case 200:
				ok++
			case 429:
				limited++
				if n, err := strconv.Atoi(a.Retry); err != nil || n < 1 || !strings.Contains(a.Body, `"rated"`) {
					t.Errorf("a refusal by the rate: Retry-After %q, body %s; want a whole number of seconds and rule rated", a.Retry, a.Body)
				}
			default:
				t.Errorf("a request under the rate: %+v, want 200 or 429", a)
			}
		}
		// Burst 3, then one a second: the burst, plus what refilled while
		// the six were in flight.
		if ok < 3 || ok > 3+got.Spread/1000 || limited == 0 {
			t.Errorf("%d of 6 went through and %d were refused in %dms; want the burst of 3 (+1 a second) and the rest 429", ok, limited, got.Spread)
		}
		if got.After.Status != 200 {
			t.Errorf("after waiting Retry-After (%ds): %+v, want 200", got.Retry, got.After)
		}
		res := r.result
		if res.GetRequestsOverRate() != uint32(limited) || res.GetRequestsAllowed() != uint32(ok+1) || up.seen("/rated") != ok+1 {
			t.Errorf("Result: over rate %d, allowed %d; stand-in saw %d; want %d, %d, %d", res.GetRequestsOverRate(), res.GetRequestsAllowed(), up.seen("/rated"), limited, ok+1, ok+1)
		}
		t.Logf("rate: %d allowed, %d refused (429) in %dms; Retry-After %ds", ok, limited, got.Spread, got.Retry)
	})

	t.Run("concurrent", func(t *testing.T) {
		req := code(budgetJS + `
const open = () => new Promise(headers => {
  const done = new Promise(end => {
    https.get("https://api.github.test/hold", { agent: false }, r => {
      let n = 0;
      headers({ status: r.statusCode, done });
      r.on("data", d => n += d.length);
      r.on("end", () => end(n));
      r.on("error", () => end(-1));
    }).on("error", e => headers({ error: e.code, done: Promise.resolve(-1) }));
  });
});
(async () => {
  // Both exchanges are open once their headers arrived: the stand-in
  // holds their bodies for seconds.
  const a = await open(), b = await open();
  const over = await req("GET", "/quick");
  const held = [await a.done, await b.done];
  await sleep(500);
  const later = await req("GET", "/quick");
  console.log(JSON.stringify({ a: a.status, b: b.status, over, held, later }));
})();
`)
		req.Policy = githubPolicy(nil, &policyv1.PolicyLimits{MaxConcurrentConnections: 2})
		var got struct {
			A, B  int
			Over  budgetReply `json:"over"`
			Held  []int       `json:"held"`
			Later budgetReply `json:"later"`
		}
		r := probe(t, s.e, req, &got)
		if got.A != 200 || got.B != 200 || len(got.Held) != 2 || got.Held[0] != 100 || got.Held[1] != 100 {
			t.Errorf("the two held exchanges: %d %d, bodies %v; want 200 200 and 100 bytes each", got.A, got.B, got.Held)
		}
		if got.Over.Status != 429 || got.Over.Retry != "1" || !strings.Contains(got.Over.Body, "limits.max_concurrent_connections") {
			t.Errorf("a third exchange while two are open: %+v, want 429 Retry-After 1 by limits.max_concurrent_connections", got.Over)
		}
		if got.Later.Status != 200 {
			t.Errorf("once they ended: %+v, want 200", got.Later)
		}
		res := r.result
		if res.GetPeakConcurrentConnections() != 2 || res.GetRequestsOverRate() != 1 || up.seen("/hold") != 2 || up.seen("/quick") != 1 {
			t.Errorf("Result: peak %d, over rate %d; stand-in saw %d holds, %d quick; want 2, 1, 2, 1", res.GetPeakConcurrentConnections(), res.GetRequestsOverRate(), up.seen("/hold"), up.seen("/quick"))
		}
	})

	t.Run("totals", func(t *testing.T) {
		up.mu.Lock()
		up.bodyBytes = 0
		up.mu.Unlock()
		req := code(budgetJS + `
(async () => {
  const out = [];
  for (const [m, p, size] of [
    ["POST", "/echo", 2000], ["POST", "/echo", 1500], ["POST", "/echo", 1000], ["POST", "/echo", 1],
    ["GET", "/size/2500"], ["GET", "/size/1000"], ["GET", "/chunked/1000"], ["GET", "/size/10"],
  ]) {
    out.push(await req(m, p, size));
    // The proxy reports an outcome as it closes the connection: let it
    // reach the executor before the next request is decided.
    await sleep(100);
  }
  console.log(JSON.stringify(out));
})();
`)
		req.Policy = githubPolicy(nil, &policyv1.PolicyLimits{MaxTotalRequestBytes: 3000, MaxTotalResponseBytes: 5000})
		var got []budgetReply
		r := probe(t, s.e, req, &got)
		if len(got) != 8 {
			t.Fatalf("replies: %+v", got)
		}
		want := []struct {
			status int
			rule   string
		}{
			{200, ""}, {403, "limits.max_total_request_bytes"}, {200, ""}, {403, "limits.max_total_request_bytes"},
			{200, ""}, {403, "limits.max_total_response_bytes"}, {200, ""}, {403, "limits.max_total_response_bytes"},
		}
		received := 0
		for i, w := range want {
			g := got[i]
			if g.Status != w.status || w.rule != "" && !strings.Contains(g.Body, `"`+w.rule+`"`) {
				t.Errorf("request %d: %+v, want %d %s", i+1, g, w.status, w.rule)
			}
			if g.Status == 200 {
				received += g.N
			}
		}
		// The chunked response had 500 bytes left: it is cut there, and
		// the sandbox's read of it fails.
		if g := got[6]; g.N != 500 || !g.Cut {
			t.Errorf("the chunked response past the total: %+v, want 500 bytes and cut", g)
		}
		res := r.result
		up.mu.Lock()
		sent := up.bodyBytes
		up.mu.Unlock()
		if res.GetRequestBytesTotal() != 3000 || sent != 3000 {
			t.Errorf("request bytes: Result %d, the stand-in read %d; want 3000", res.GetRequestBytesTotal(), sent)
		}
		if res.GetResponseBytesTotal() != 5000 || received != 5000 {
			t.Errorf("response bytes: Result %d, the sandbox read %d; want 5000", res.GetResponseBytesTotal(), received)
		}
		rules := map[string]int{}
		for _, l := range res.GetNetworkLog() {
			if l.GetBlocked() {
				rules[l.GetRuleId()]++
			}
		}
		if rules["limits.max_total_request_bytes"] != 2 || rules["limits.max_total_response_bytes"] != 1 {
			t.Errorf("blocked in the network log by rule: %v", rules)
		}
		cut := 0
		for _, ev := range requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_OUTCOME) {
			if strings.Contains(ev.GetError(), "max_total_response_bytes") {
				cut++
			}
		}
		if cut != 2 {
			t.Errorf("%d outcome events name max_total_response_bytes, want 2 (the refused and the cut response)", cut)
		}
		t.Logf("totals: request bytes %d, response bytes %d; network log %s", res.GetRequestBytesTotal(), res.GetResponseBytesTotal(), fmt.Sprint(rules))
	})
}
