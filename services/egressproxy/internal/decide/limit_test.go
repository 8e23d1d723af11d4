package decide

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestSourceLimiter(t *testing.T) {
	a, b := netip.MustParseAddr("10.88.0.2"), netip.MustParseAddr("10.88.0.6")
	tests := []struct {
		name            string
		rate            float64
		burst, inFlight int
		hold            bool // keep every admitted question in flight
		admitted        int  // of 10 at once from a
		limit           string
	}{
		{name: "burst then rate", rate: 1, burst: 4, admitted: 4, limit: "per second"},
		{name: "in flight", inFlight: 3, hold: true, admitted: 3, limit: "already waiting"},
		{name: "in flight released", inFlight: 3, admitted: 10},
		{name: "none", admitted: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newSourceLimiter(kindDNS, tt.rate, tt.burst, tt.inFlight, nil, slog.New(slog.DiscardHandler))
			admitted := 0
			for range 10 {
				release, err := l.acquire(a)
				if err != nil {
					if !errors.Is(err, ErrRateLimited) || !strings.Contains(err.Error(), tt.limit) {
						t.Fatalf("refusal %v, want ErrRateLimited saying %q", err, tt.limit)
					}
					continue
				}
				admitted++
				if !tt.hold {
					release()
				}
			}
			if admitted != tt.admitted {
				t.Errorf("admitted %d of 10, want %d", admitted, tt.admitted)
			}
			// Every refusal is counted in one report for the source, with
			// one reason per refusalLogInterval.
			refused := 10 - tt.admitted
			reports := l.unreported()
			switch {
			case refused == 0 && len(reports) != 0:
				t.Errorf("reports %+v, want none", reports)
			case refused > 0 && (len(reports) != 1 || reports[0].SourceIP != a || reports[0].RateLimitedDNSQueries != uint32(refused) ||
				reports[0].RateLimitedRequests != 0 || !strings.Contains(reports[0].Reason, tt.limit)):
				t.Errorf("reports %+v, want one counting %d DNS queries of %v, its reason saying %q", reports, refused, a, tt.limit)
			}
			if again := l.unreported(); len(again) != 0 {
				t.Errorf("reported again: %+v", again)
			}
			// A neighbour is never limited by a's questions.
			if release, err := l.acquire(b); err != nil {
				t.Errorf("neighbour refused: %v", err)
			} else {
				release()
			}
		})
	}
}

func TestSourceLimiterRefills(t *testing.T) {
	a := netip.MustParseAddr("10.88.0.2")
	l := newSourceLimiter(kindHTTP, 50, 1, 0, nil, slog.New(slog.DiscardHandler))
	if _, err := l.acquire(a); err != nil {
		t.Fatal(err)
	}
	if _, err := l.acquire(a); err == nil {
		t.Fatal("second question at once admitted with a bucket of 1")
	}
	time.Sleep(40 * time.Millisecond) // 2 tokens at 50/s, capped at 1
	if _, err := l.acquire(a); err != nil {
		t.Fatalf("after a refill: %v", err)
	}
}
