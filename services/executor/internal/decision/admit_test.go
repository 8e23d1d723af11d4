package decision

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// budgetPolicy allows everything to api.stripe.com, products at 1 a
// second in bursts of 2, under limits the caller appends.
const budgetPolicy = `
version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { id: products, path: "/v1/products/**", action: allow, rate: { per_second: 1, burst: 2 } }
    default: allow
`

// budgeted returns a Decide stream to a service whose execution at
// 10.88.0.2 runs budgetPolicy with limits, and the execution.
func budgeted(t *testing.T, limits string) (stream, *Execution) {
	t.Helper()
	reg := NewRegistry()
	e := NewExecution("x1", compile(t, budgetPolicy+limits), make(chan *executorv1.NetworkEvent, 256))
	t.Cleanup(reg.Register(netip.MustParseAddr("10.88.0.2"), e))
	return decider(t, reg), e
}

func bodyReq(id uint64, path string, contentLength int64) *egressv1.DecideRequest {
	return question(id, &egressv1.HttpRequest{
		SourceIp: "10.88.0.2", Method: "POST", Scheme: "https", Host: "api.stripe.com", Port: 443, Path: path, ContentLength: contentLength,
	})
}

func outcome(id, sent, received uint64) *egressv1.DecideRequest {
	return report(&egressv1.Outcome{QuestionId: id, StatusCode: 200, BytesSent: sent, BytesReceived: received})
}

// wantRefused checks resp is a deny by rule, with retryAfter seconds (0
// for none).
func wantRefused(t *testing.T, resp *egressv1.DecideResponse, rule string, retryAfter uint32) {
	t.Helper()
	if resp.GetDecision() != policyv1.Decision_DECISION_DENY || resp.GetRuleId() != rule || resp.GetRetryAfterSeconds() != retryAfter {
		t.Fatalf("%v %q (%s) retry after %d, want deny by %s retry after %d", resp.GetDecision(), resp.GetRuleId(), resp.GetReason(), resp.GetRetryAfterSeconds(), rule, retryAfter)
	}
}

func wantAllowed(t *testing.T, resp *egressv1.DecideResponse) {
	t.Helper()
	if resp.GetDecision() != policyv1.Decision_DECISION_ALLOW {
		t.Fatalf("%v %q (%s), want allow", resp.GetDecision(), resp.GetRuleId(), resp.GetReason())
	}
}

// A rule's rate lets its burst through, then refuses with a Retry-After
// (429 in the log), and counts the refusal; other rules are not held
// back by it.
func TestRuleRate(t *testing.T) {
	s, e := budgeted(t, "")
	for id := uint64(1); id <= 2; id++ {
		wantAllowed(t, ask(t, s, httpReq(id, "10.88.0.2", "GET", "api.stripe.com", "/v1/products/p")))
	}
	resp := ask(t, s, httpReq(3, "10.88.0.2", "GET", "api.stripe.com", "/v1/products/p"))
	wantRefused(t, resp, "products", 1)
	if !strings.Contains(resp.GetReason(), "1 requests a second") {
		t.Errorf("reason %q does not name the rate", resp.GetReason())
	}
	wantAllowed(t, ask(t, s, httpReq(4, "10.88.0.2", "GET", "api.stripe.com", "/v1/customers")))
	sum := e.Summary()
	if sum.OverRate != 1 || sum.Blocked != 1 || sum.Allowed != 3 {
		t.Errorf("summary: over rate %d, blocked %d, allowed %d; want 1, 1, 3", sum.OverRate, sum.Blocked, sum.Allowed)
	}
	if st := sum.Log[2].GetStatusCode(); st != 429 || sum.Log[2].GetRuleId() != "products" {
		t.Errorf("log entry of the refusal: %d %q, want 429 products", st, sum.Log[2].GetRuleId())
	}
}

// Exchanges open at once are bounded: the one past the limit is refused
// (429, Retry-After 1) until an outcome closes one; the peak is reported.
func TestMaxConcurrentConnections(t *testing.T) {
	s, e := budgeted(t, "limits: { max_concurrent_connections: 2 }\n")
	wantAllowed(t, ask(t, s, httpReq(1, "10.88.0.2", "GET", "api.stripe.com", "/a")))
	wantAllowed(t, ask(t, s, httpReq(2, "10.88.0.2", "GET", "api.stripe.com", "/b")))
	wantRefused(t, ask(t, s, httpReq(3, "10.88.0.2", "GET", "api.stripe.com", "/c")), ruleConcurrent, 1)
	if err := s.Send(outcome(1, 0, 10)); err != nil {
		t.Fatal(err)
	}
	// The outcome is read before the next question: one stream, in order.
	wantAllowed(t, ask(t, s, httpReq(4, "10.88.0.2", "GET", "api.stripe.com", "/d")))
	wantRefused(t, ask(t, s, httpReq(5, "10.88.0.2", "GET", "api.stripe.com", "/e")), ruleConcurrent, 1)
	if sum := e.Summary(); sum.PeakConcurrent != 2 || sum.OverRate != 2 || sum.ResponseBytes != 10 {
		t.Errorf("summary: peak %d, over rate %d, response bytes %d; want 2, 2, 10", sum.PeakConcurrent, sum.OverRate, sum.ResponseBytes)
	}
}

// The request body total: a declared length is held while in flight and
// must fit what is left; a body of unknown length may use all that is
// left (the proxy's cap) and is refused once nothing is.
func TestMaxTotalRequestBytes(t *testing.T) {
	s, e := budgeted(t, "limits: { max_total_request_bytes: 100, max_request_bytes: 80 }\n")
	resp := ask(t, s, bodyReq(1, "/a", 60))
	wantAllowed(t, resp)
	if resp.GetMaxRequestBytes() != 80 {
		t.Errorf("max_request_bytes %d, want the per-request 80", resp.GetMaxRequestBytes())
	}
	// 60 are held by request 1: 40 are left.
	resp = ask(t, s, bodyReq(2, "/b", 60))
	wantRefused(t, resp, ruleTotalRequestBytes, 0)
	if !strings.Contains(resp.GetReason(), "40 bytes left") {
		t.Errorf("reason %q does not say what is left", resp.GetReason())
	}
	if err := s.Send(outcome(1, 60, 0)); err != nil {
		t.Fatal(err)
	}
	resp = ask(t, s, bodyReq(3, "/c", -1))
	wantAllowed(t, resp)
	if resp.GetMaxRequestBytes() != 40 {
		t.Errorf("max_request_bytes %d, want the 40 left", resp.GetMaxRequestBytes())
	}
	if err := s.Send(outcome(3, 40, 0)); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, ask(t, s, bodyReq(4, "/d", -1)), ruleTotalRequestBytes, 0)
	wantRefused(t, ask(t, s, bodyReq(5, "/e", 1)), ruleTotalRequestBytes, 0)
	// A request without a body spends nothing.
	wantAllowed(t, ask(t, s, bodyReq(6, "/f", 0)))
	if sum := e.Summary(); sum.RequestBytes != 100 || sum.Blocked != 3 || sum.OverRate != 0 {
		t.Errorf("summary: request bytes %d, blocked %d, over rate %d; want 100, 3, 0", sum.RequestBytes, sum.Blocked, sum.OverRate)
	}
}

// The response body total: each allowed request may return what is left;
// once the outcomes spent it, requests are refused.
func TestMaxTotalResponseBytes(t *testing.T) {
	s, e := budgeted(t, "limits: { max_total_response_bytes: 1KiB }\n")
	resp := ask(t, s, httpReq(1, "10.88.0.2", "GET", "api.stripe.com", "/a"))
	wantAllowed(t, resp)
	if resp.GetMaxResponseBytes() != 1024 {
		t.Errorf("max_response_bytes %d, want 1024", resp.GetMaxResponseBytes())
	}
	if err := s.Send(outcome(1, 0, 700)); err != nil {
		t.Fatal(err)
	}
	resp = ask(t, s, httpReq(2, "10.88.0.2", "GET", "api.stripe.com", "/b"))
	if resp.GetMaxResponseBytes() != 324 {
		t.Errorf("max_response_bytes %d, want the 324 left", resp.GetMaxResponseBytes())
	}
	if err := s.Send(outcome(2, 0, 324)); err != nil {
		t.Fatal(err)
	}
	resp = ask(t, s, httpReq(3, "10.88.0.2", "GET", "api.stripe.com", "/c"))
	wantRefused(t, resp, ruleTotalResponseBytes, 0)
	if sum := e.Summary(); sum.ResponseBytes != 1024 || sum.Log[2].GetStatusCode() != 403 || sum.Log[2].GetRuleId() != ruleTotalResponseBytes {
		t.Errorf("summary: response bytes %d, refusal logged %d %q; want 1024, 403 %s", sum.ResponseBytes, sum.Log[2].GetStatusCode(), sum.Log[2].GetRuleId(), ruleTotalResponseBytes)
	}
}

// An allowed request whose outcome can no longer arrive (the stream
// closed) gives back its open exchange, and what it held of the request
// total counts as spent.
func TestLostOutcomeSettles(t *testing.T) {
	reg := NewRegistry()
	e := NewExecution("x1", compile(t, budgetPolicy+"limits: { max_concurrent_connections: 1, max_total_request_bytes: 100 }\n"), make(chan *executorv1.NetworkEvent, 256))
	t.Cleanup(reg.Register(netip.MustParseAddr("10.88.0.2"), e))
	s := decider(t, reg)
	wantAllowed(t, ask(t, s, bodyReq(1, "/a", -1)))
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.Summary().RequestBytes != 100 {
		if time.Now().After(deadline) {
			t.Fatalf("request bytes %d after the stream closed, want the 100 held", e.Summary().RequestBytes)
		}
		time.Sleep(5 * time.Millisecond)
	}
	s2 := open(t, serve(t, reg))
	if err := s2.Send(hello(testCA)); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, ask(t, s2, bodyReq(2, "/b", -1)), ruleTotalRequestBytes, 0)
	wantAllowed(t, ask(t, s2, bodyReq(3, "/c", 0)))
	if sum := e.Summary(); sum.PeakConcurrent != 1 {
		t.Errorf("peak %d, want 1", sum.PeakConcurrent)
	}
}
