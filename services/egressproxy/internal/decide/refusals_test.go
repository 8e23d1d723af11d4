package decide_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decidetest"
)

// TestRateLimitedCountedToTheExecutor floods a client's per-source limits
// with HTTP requests and DNS queries: every refusal reaches the executor
// counted, by kind and source, in a few reports rather than one each,
// and only the first of each second's carries a reason.
func TestRateLimitedCountedToTheExecutor(t *testing.T) {
	f := decidetest.Start(t, decidetest.StripeLike)
	c := newClientWith(t, f.Addr, decide.Config{Timeout: 2 * time.Second,
		Limits: decide.Limits{HTTPRate: 0.001, HTTPBurst: 1, DNSRate: 0.001, DNSBurst: 1}})
	waitUp(t, c, true)
	src, other := netip.MustParseAddr("10.88.0.2"), netip.MustParseAddr("10.88.0.6")
	const flood = 500
	refused := map[string]int{}
	for i := range flood + 1 {
		if _, err := c.AskHTTP(context.Background(), decide.HTTPQuestion{SourceIP: src, Method: "GET", Host: "api.stripe.test", Path: "/v1/products"}); errors.Is(err, decide.ErrRateLimited) {
			refused["http"]++
		} else if i > 0 {
			t.Fatalf("request %d: %v, want rate limited", i, err)
		}
		if _, err := c.AskDNS(context.Background(), decide.DNSQuestion{SourceIP: src, Name: "api.stripe.test", Type: "A"}); errors.Is(err, decide.ErrRateLimited) {
			refused["dns"]++
		}
	}
	// A neighbour is not limited, and not counted.
	if _, err := c.AskDNS(context.Background(), decide.DNSQuestion{SourceIP: other, Name: "api.stripe.test", Type: "A"}); err != nil {
		t.Fatalf("neighbour: %v", err)
	}
	if refused["http"] != flood || refused["dns"] != flood {
		t.Fatalf("refused %v, want %d of each", refused, flood)
	}
	var counted map[string]int
	var reports, reasons int
	f.WaitFor(t, "every refusal counted", func(*egressv1.DecideRequest) bool {
		counted, reports, reasons = map[string]int{}, 0, 0
		for _, r := range f.Received() {
			ref := r.GetReport().GetRefusal()
			if ref == nil {
				continue
			}
			if ref.GetSourceIp() != src.String() {
				t.Fatalf("a refusal reported for %s", ref.GetSourceIp())
			}
			reports++
			counted["http"] += int(ref.GetRateLimitedRequests())
			counted["dns"] += int(ref.GetRateLimitedDnsQueries())
			if ref.GetReason() != "" {
				reasons++
			}
		}
		return counted["http"] == flood && counted["dns"] == flood
	})
	t.Logf("%d refusals of each kind in %d reports, %d with a reason", flood, reports, reasons)
	if reports >= 2*flood/4 {
		t.Errorf("%d reports for %d refusals: they are not being gathered", reports, 2*flood)
	}
	if reasons != 2 {
		t.Errorf("%d reports with a reason, want 2 (one per kind: the flood took under a second)", reasons)
	}
}
