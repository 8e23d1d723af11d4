package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
)

// secretCorpus reads the proxy's corpus of real-shaped secrets
// (kind value per line), which its unit and fuzz tests use too.
func secretCorpus(t *testing.T) [][2]string {
	t.Helper()
	f, err := os.Open("../../services/egressproxy/internal/redact/testdata/secrets.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][2]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, value, _ := strings.Cut(line, " ")
		out = append(out, [2]string{kind, value})
	}
	if len(out) < 10 {
		t.Fatalf("corpus of %d secrets", len(out))
	}
	return out
}

// secretRequest is one request the sandbox makes; Allowed is what the
// operator's policy says of it.
type secretRequest struct {
	URL     string `json:"url"`
	H2      bool   `json:"h2"`
	Allowed bool   `json:"-"`
}

// secretTargets places s where its kind is sent: key-shaped values in a
// path segment and under harmless query names, the others in their
// service's path or under their parameter name; each on an allowed path
// (pay.test /v1/products/**, any api.github.test path) and a blocked one.
func secretTargets(kind, s string) []secretRequest {
	q := url.QueryEscape(s)
	var allowed, blocked []string
	switch kind {
	case "telegram_bot":
		allowed = []string{"https://api.github.test/bot" + s + "/sendMessage"}
		blocked = []string{"https://pay.test/bot" + s + "/sendMessage"}
	case "slack_webhook_secret":
		allowed = []string{"https://api.github.test/services/T0123ABCD/B0456EFGH/" + s}
		blocked = []string{"https://pay.test/services/T0123ABCD/B0456EFGH/" + s}
	case "discord_webhook_token":
		allowed = []string{"https://api.github.test/api/webhooks/123456789012345678/" + s}
		blocked = []string{"https://pay.test/api/webhooks/123456789012345678/" + s}
	case "password_param", "session_param", "jwt_param", "auth_param":
		name := strings.TrimSuffix(kind, "_param")
		allowed = []string{"https://pay.test/v1/products/x?" + name + "=" + q, "https://pay.test/v1/products/x?a=1;" + name + "=" + q}
		blocked = []string{"https://pay.test/v2/x?a=1;" + name + "=" + q}
	default:
		allowed = []string{"https://pay.test/v1/products/" + s, "https://pay.test/v1/products/x?q=" + q, "https://pay.test/v1/products/x?a=1;note=" + q}
		blocked = []string{"https://pay.test/v2/" + s, "https://pay.test/v2/x?id=" + q}
	}
	var out []secretRequest
	for _, h2 := range []bool{false, true} {
		for _, u := range allowed {
			out = append(out, secretRequest{URL: u, H2: h2, Allowed: true})
		}
		for _, u := range blocked {
			out = append(out, secretRequest{URL: u, H2: h2})
		}
	}
	return out
}

// TestSecretsNeverWrittenDown has a sandbox send every corpus secret in
// the path, the query and the headers (Authorization, Cookie,
// Sec-WebSocket-Protocol, X-Forwarded-Authorization, X-Api-Key) of
// requests the policy allows and blocks, over HTTP/1.1 and HTTP/2, while a
// neighbouring sandbox's allowed requests succeed. Every request gets the
// policy's answer, and no secret appears in any event, the Result, the
// executor's log or the proxy's log.
func TestSecretsNeverWrittenDown(t *testing.T) {
	s := startNetStack(t)
	corpus := secretCorpus(t)
	var reqs []secretRequest
	for _, c := range corpus {
		reqs = append(reqs, secretTargets(c[0], c[1])...)
	}
	values := make([]string, len(corpus))
	for i, c := range corpus {
		values[i] = c[1]
	}
	reqJSON, _ := json.Marshal(reqs)
	valJSON, _ := json.Marshal(values)
	leaky := code(fmt.Sprintf(`
const https = require("https"), http2 = require("http2");
const reqs = %s, secrets = %s;
const headers = s => ({ authorization: "Bearer " + s, cookie: "session=" + s, "sec-websocket-protocol": "chat, " + s,
  "x-forwarded-authorization": s, "x-api-key": s });
const sessions = {};
const h2 = (u, hdr) => new Promise(res => {
  let c = sessions[u.origin];
  if (!c) { c = sessions[u.origin] = http2.connect(u.origin); c.on("error", () => {}); }
  const q = c.request({ ":path": u.pathname + u.search, ...hdr });
  q.on("response", h => { q.resume(); q.on("end", () => res(String(h[":status"]))); });
  q.on("error", e => res(e.code));
  q.end();
});
const h1 = (u, hdr) => new Promise(res => {
  const q = https.request(u, { headers: hdr }, r => { r.resume(); r.on("end", () => res(String(r.statusCode))); });
  q.on("error", e => res(e.code));
  q.end();
});
(async () => {
  const out = [];
  for (let i = 0; i < reqs.length; i++) {
    const u = new URL(reqs[i].url), hdr = headers(secrets[i %% secrets.length]);
    out.push(await (reqs[i].h2 ? h2(u, hdr) : h1(u, hdr)));
  }
  for (const c of Object.values(sessions)) c.close();
  console.log(JSON.stringify(out));
})();
`, reqJSON, valJSON))
	nb := startNeighbour(t, s.e)
	lr := s.e.mustRun(t, leaky)
	nb.check(t)
	var statuses []string
	if err := json.Unmarshal(lastLine(lr.stdout), &statuses); err != nil || len(statuses) != len(reqs) {
		t.Fatalf("output %q (%v), want %d statuses\nstderr: %s", lr.stdout, err, len(reqs), lr.stderr)
	}
	var allowed, blocked uint32
	for i, r := range reqs {
		want := "403"
		if r.Allowed {
			want = "200"
			allowed++
		} else {
			blocked++
		}
		if statuses[i] != want {
			t.Errorf("%s (h2 %v): %s, want %s", r.URL, r.H2, statuses[i], want)
		}
	}
	res := lr.result
	if res.GetRequestsAllowed() != allowed || res.GetRequestsBlocked() != blocked || len(res.GetNetworkLog()) != len(reqs) {
		t.Errorf("result: %d allowed, %d blocked, %d log entries; want %d, %d, %d",
			res.GetRequestsAllowed(), res.GetRequestsBlocked(), len(res.GetNetworkLog()), allowed, blocked, len(reqs))
	}
	t.Logf("%d requests (%d allowed, %d blocked) carrying %d secrets", len(reqs), allowed, blocked, len(corpus))

	written := map[string]string{"executor log": s.execLogs.String(), "proxy log": s.proxy.logs.String()}
	var events strings.Builder
	for _, ev := range lr.events {
		if ev.GetStdout() != nil || ev.GetStderr() != nil {
			continue // the program may print its own keys
		}
		b, _ := protojson.Marshal(ev)
		events.Write(b)
	}
	written["events and Result"] = events.String()
	for _, c := range corpus {
		for what, text := range written {
			if strings.Contains(text, c[1]) || strings.Contains(text, url.QueryEscape(c[1])) {
				t.Errorf("%s secret in the %s", c[0], what)
			}
		}
	}
	if !strings.Contains(events.String(), "redacted") {
		t.Error("no redacted value in the events: the test sent no secret where it is written down")
	}
}

func lastLine(b []byte) []byte {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return []byte(lines[len(lines)-1])
}
