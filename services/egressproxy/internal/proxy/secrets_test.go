package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
	"google.golang.org/protobuf/encoding/prototext"
)

// canary is what the targets below are made of besides the bytes that
// make them malformed: no fixed reason text holds any of its letters, nor
// any of forbidden, so a reason that holds one echoes the request.
const (
	canary    = "QZXJ"
	forbidden = canary + `?=&;"#\`
)

// TestReasonsNeverEchoTheTarget sends requests the proxy blocks for what
// their path, query or head hold, and checks that neither the refusal's
// reason nor the violation the decider is told holds a byte of them
// beyond a fixed allowlist: all but the canary's letters and the
// target's punctuation.
func TestReasonsNeverEchoTheTarget(t *testing.T) {
	long := "/v1/" + strings.Repeat(canary, 3000) + "?k=" + canary
	tests := []struct {
		name, target, extra string
		status              int
		reason              string
	}{
		{"invalid escape net/http refuses", "/search/100%?api_key=" + canary, "", 403, "invalid percent escape"},
		{"invalid escape in query", "/v1/x?api_key=" + canary + "%zz", "", 403, "invalid percent escape in query"},
		{"encoded slash", "/v1/" + canary + "%2F..%2Fx?k=" + canary, "", 403, "encoded slash"},
		{"encoded dot", "/v1/" + canary + "/%2e%2e/x?k=" + canary, "", 403, "encoded dot"},
		{"dot with parameters", "/v1/..;" + canary + "/x?k=" + canary, "", 403, "dot segment"},
		{"backslash", "/v1/" + canary + `\x?k=` + canary, "", 403, ""},
		{"scheme differs", "http://api.stripe.test/" + canary + "?k=" + canary, "", 403, "scheme"},
		{"unsupported upgrade", "/v1/products?k=" + canary, "Connection: upgrade\r\nUpgrade: " + canary + "\r\n", 403, "upgrade"},
		{"header net/http refuses", "/v1/products?k=" + canary, "Content-Length: " + canary + "?=\r\n", 403, "unparsable request"},
		{"port differs", "/v1/products?k=" + canary, "", 403, "port"},
		{"target too long", long, "", 414, "request target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t)
			host := "api.stripe.test"
			if tt.name == "port differs" {
				host += ":8443"
			}
			resp := e.raw(t, "api.stripe.test", "GET "+tt.target+" HTTP/1.1\r\nHost: "+host+"\r\n"+tt.extra+"\r\n")
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.status)
			}
			var b struct{ Reason string }
			if err := json.Unmarshal(body, &b); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			if !strings.Contains(b.Reason, tt.reason) {
				t.Errorf("reason %q, want it to name %q", b.Reason, tt.reason)
			}
			checkNoEcho(t, "refusal reason", b.Reason)
			q := e.decider.WaitFor(t, "the question", func(r *egressv1.DecideRequest) bool { return r.GetQuestion().GetHttp() != nil }).GetQuestion().GetHttp()
			if q.GetViolation() == "" {
				t.Fatalf("no violation in %v", q)
			}
			checkNoEcho(t, "violation", q.GetViolation())
		})
	}
}

func checkNoEcho(t *testing.T, what, reason string) {
	t.Helper()
	if i := strings.IndexAny(reason, forbidden); i >= 0 {
		t.Errorf("%s %q holds %q of the request", what, reason, reason[i])
	}
}

// loadCorpus reads the redactor's corpus of real-shaped secrets.
func loadCorpus(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../redact/testdata/secrets.txt")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, value, _ := strings.Cut(line, " ")
		out[kind] = value
	}
	return out
}

// syncBuffer is a log sink the proxy's goroutines write to concurrently.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCorpusNeverWrittenDown sends every corpus secret in the path, the
// query and the headers, in requests allowed and blocked, over HTTP/1.1
// and HTTP/2, and checks that none reaches the decider (questions and
// reports), the proxy's log (at debug level) or its metrics.
func TestCorpusNeverWrittenDown(t *testing.T) {
	logs := &syncBuffer{}
	e := setupWithLog(t, slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	corpus := loadCorpus(t)
	targets := func(kind, s string) []string {
		q := url.QueryEscape(s)
		switch kind {
		case "telegram_bot":
			return []string{"/bot" + s + "/sendMessage", "/v1/products/bot" + s + "/x"}
		case "slack_webhook_secret":
			return []string{"/services/T0123ABCD/B0456EFGH/" + s, "/v1/products/services/T0123ABCD/B0456EFGH/" + s}
		case "discord_webhook_token":
			return []string{"/api/webhooks/123456789012345678/" + s, "/v1/products/webhooks/123456789012345678/" + s}
		case "password_param":
			return []string{"/v1/products?password=" + q, "/v1/charges?a=1;pass=" + q}
		case "session_param":
			return []string{"/v1/products?session=" + q, "/v1/charges?a=1;session=" + q}
		case "jwt_param":
			return []string{"/v1/products?jwt=" + q, "/v1/charges?a=1;jwt=" + q}
		case "auth_param":
			return []string{"/v1/products?auth=" + q, "/v1/charges?a=1;auth=" + q}
		}
		return []string{"/v1/products/" + s, "/v1/products?q=" + q, "/v1/products?a=1;note=" + q, "/v1/charges/" + s, "/v1/charges?id=" + q}
	}
	sent := 0
	for kind, s := range corpus {
		for _, target := range targets(kind, s) {
			for _, c := range []*http.Client{e.h1Client("api.stripe.test"), e.h2Client("api.stripe.test")} {
				for _, method := range []string{"GET", "POST"} {
					resp := get(t, c, method, "https://api.stripe.test"+target, map[string]string{
						"Authorization":             "Bearer " + s,
						"Cookie":                    "session=" + s,
						"Sec-WebSocket-Protocol":    "chat, " + s,
						"X-Forwarded-Authorization": s,
						"X-Api-Key":                 s,
					})
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					sent++
				}
			}
		}
	}
	// Every question was answered; wait for the outcomes of the allowed.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var questions, outcomes, allowed int
		for _, r := range e.decider.Received() {
			if r.GetQuestion().GetHttp() != nil {
				questions++
			}
			if r.GetReport().GetOutcome() != nil {
				outcomes++
			}
		}
		allowed = int(metricValue(t, e, "allow"))
		if questions >= sent && outcomes >= allowed {
			if allowed == 0 || allowed == sent {
				t.Fatalf("%d of %d requests allowed: the test needs both kinds", allowed, sent)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d questions and %d outcomes for %d requests", questions, outcomes, sent)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var decider strings.Builder
	for _, r := range e.decider.Received() {
		decider.WriteString(prototext.Format(r))
	}
	var metrics strings.Builder
	families, err := e.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		fmt.Fprintln(&metrics, f.String())
	}
	for kind, s := range corpus {
		for what, text := range map[string]string{"decider": decider.String(), "log": logs.String(), "metrics": metrics.String()} {
			if strings.Contains(text, s) || strings.Contains(text, url.QueryEscape(s)) {
				t.Errorf("%s secret reached the %s", kind, what)
			}
		}
	}
	if !strings.Contains(logs.String(), `"path":"/bot[redacted sha256:`) && !strings.Contains(logs.String(), `"path":"/bot%5Bredacted%20sha256:`) {
		t.Errorf("the log has no redacted Telegram path")
	}
}

func metricValue(t *testing.T, e *env, decision string) float64 {
	t.Helper()
	var n float64
	for _, p := range []string{"http/1.1", "http/2"} {
		n += metricValueOf(t, e, decision, p)
	}
	return n
}

func metricValueOf(t *testing.T, e *env, decision, protocol string) float64 {
	t.Helper()
	return metricstest.Value(t, e.metrics, "sandpit_egress_requests_total", map[string]string{"decision": decision, "protocol": protocol})
}
