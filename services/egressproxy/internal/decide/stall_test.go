package decide_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/relaytest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decidetest"
)

// With the bytes to the executor dropped (nothing closed), only the first
// question waits the timeout; the next are denied at once with the
// unavailable reason, and questions are answered again as soon as the
// path carries bytes, without a new connection.
func TestStalledPathFailsFastAndRecovers(t *testing.T) {
	f := decidetest.Start(t, decidetest.StripeLike)
	relay := relaytest.Start(t, f.Addr)
	const timeout = 300 * time.Millisecond
	c := newClient(t, relay.Addr, timeout)
	waitUp(t, c, true)
	if v, err := ask(c, "GET", "api.stripe.test"); err != nil || v.Decision != policyv1.Decision_DECISION_ALLOW {
		t.Fatalf("before the stall: %+v, %v", v, err)
	}

	relay.Pause()
	start := time.Now()
	v, err := ask(c, "GET", "api.stripe.test")
	first := time.Since(start)
	if !errors.Is(err, decide.ErrUnavailable) || v.Decision != policyv1.Decision_DECISION_DENY || !strings.Contains(v.Reason, "no answer within") {
		t.Fatalf("first question on the stalled path: %+v, %v", v, err)
	}
	if first < timeout {
		t.Errorf("first question denied after %s, before the timeout %s", first, timeout)
	}
	if !c.Stalled() {
		t.Fatal("Stalled() false after a question timed out")
	}
	start = time.Now()
	for i := range 20 {
		var v decide.Verdict
		var err error
		if i%2 == 0 {
			v, err = c.AskDNS(t.Context(), decide.DNSQuestion{Name: "api.stripe.test", Type: "A"})
		} else {
			v, err = ask(c, "GET", "api.stripe.test")
		}
		if !errors.Is(err, decide.ErrUnavailable) || v.Decision != policyv1.Decision_DECISION_DENY ||
			!strings.HasPrefix(v.Reason, "policy decision unavailable: decide stream stalled") {
			t.Fatalf("question %d while stalled: %+v, %v", i, v, err)
		}
	}
	if d := time.Since(start); d > timeout {
		t.Errorf("20 questions while stalled took %s, want them at once (under the %s timeout)", d, timeout)
	}
	t.Logf("first deny after %s, then 20 in %s", first, time.Since(start))

	relay.Resume()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := ask(c, "GET", "api.stripe.test")
		if err == nil && v.Decision == policyv1.Decision_DECISION_ALLOW {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %+v, %v 5s after the path came back", v, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if c.Stalled() {
		t.Error("Stalled() after an answer")
	}
}
