package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
)

// budgetDecider answers as the executor's budgets would: /rate is over a
// rule's rate, every other path is allowed with 50 response bytes left.
type budgetDecider struct{ outcomeRecorder }

func (d *budgetDecider) AskHTTP(_ context.Context, q decide.HTTPQuestion) (decide.Verdict, error) {
	if q.Path == "/rate" {
		return decide.Verdict{Decision: policyv1.Decision_DECISION_DENY, RuleID: "products", Reason: "rule products allows 1 requests a second", RetryAfterSeconds: 3}, nil
	}
	return decide.Verdict{Decision: policyv1.Decision_DECISION_ALLOW, RuleID: "test", MaxResponseBytes: 50}, nil
}

func (d *budgetDecider) AskTLS(context.Context, decide.TLSQuestion) (decide.Verdict, error) {
	return decide.Verdict{Decision: policyv1.Decision_DECISION_ALLOW}, nil
}

// wantCut checks the last outcome: received bytes returned, and the
// response budget's error.
func (d *budgetDecider) wantCut(t *testing.T, received uint64) {
	t.Helper()
	var o decide.Outcome
	waitFor(t, "an outcome", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.outcomes) == 0 {
			return false
		}
		o = d.outcomes[len(d.outcomes)-1]
		return true
	})
	if o.BytesReceived != received || o.Error != errResponseTooLarge.Error() {
		t.Errorf("outcome %+v, want %d bytes received and %q", o, received, errResponseTooLarge)
	}
}

// wantRetryAfter checks resp is the 429 of budgetDecider's rate.
func wantRetryAfter(t *testing.T, resp *http.Response) {
	t.Helper()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "3" {
		t.Errorf("over a rate: %d Retry-After %q, want 429 Retry-After 3", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// Over a rate the proxy answers 429 with the executor's Retry-After; a
// response declaring more than the budget left is refused with 403 naming
// it; one that grows past it is cut, and the sandbox's read of it fails.
func TestResponseBudgetAndRate(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := strings.Repeat("x", 100)
		if r.URL.Path == "/chunked" {
			io.WriteString(w, body[:40])
			w.(http.Flusher).Flush()
			io.WriteString(w, body[40:])
			return
		}
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, body)
	}))
	t.Cleanup(up.Close)
	d := &budgetDecider{}
	e := startPlain(t, Config{Decider: d}, up.Listener.Addr().String())

	send := func(path string) (*http.Response, *bufio.Reader) {
		t.Helper()
		c := e.dialFrom(t, "127.0.0.2")
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: hang.test\r\n\r\n", path)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp, br
	}

	resp, _ := send("/rate")
	wantRetryAfter(t, resp)

	resp, _ = send("/fixed")
	var b struct {
		Rule string `json:"rule"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil || resp.StatusCode != http.StatusForbidden || b.Rule != "limits.max_total_response_bytes" {
		t.Errorf("a response of 100 bytes with 50 left: %d rule %q (%v), want 403 limits.max_total_response_bytes", resp.StatusCode, b.Rule, err)
	}
	d.wantCut(t, 0)

	// A HEAD response declares a length but has no body: it spends nothing.
	c := e.dialFrom(t, "127.0.0.2")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "HEAD /fixed HTTP/1.1\r\nHost: hang.test\r\n\r\n")
	head, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "HEAD"})
	if err != nil || head.StatusCode != http.StatusOK {
		t.Errorf("HEAD of a response over the budget: %v %v, want 200", head, err)
	}

	resp, _ = send("/chunked")
	got, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || err == nil || len(got) != 50 {
		t.Errorf("a chunked response past the budget: %d, read %d bytes, err %v; want 200, 50 bytes and an error", resp.StatusCode, len(got), err)
	}
	d.wantCut(t, 50)
}

// Over HTTP/2 the same: 429 with Retry-After, and a response growing past
// the budget has its stream reset after the bytes that fit.
func TestResponseBudgetAndRateH2(t *testing.T) {
	d := &budgetDecider{}
	e := setupWithLog(t, slog.DiscardHandler, func(c *Config) { c.Decider = d })
	c := e.h2Client("api.stripe.test")

	resp := get(t, c, "GET", "https://api.stripe.test/rate", nil)
	resp.Body.Close()
	wantRetryAfter(t, resp)

	resp = get(t, c, "GET", "https://api.stripe.test/v1/products", nil)
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || err != nil || len(body) > 50 {
		t.Errorf("a response within the budget: %d, %d bytes, %v", resp.StatusCode, len(body), err)
	}

	resp = get(t, c, "GET", "https://api.stripe.test/stream", nil)
	body, err = io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || err == nil || len(body) > 50 {
		t.Errorf("a response growing past the budget: %d, read %d bytes, err %v; want 200, at most 50 bytes and an error", resp.StatusCode, len(body), err)
	}
	d.wantCut(t, 50)
}
