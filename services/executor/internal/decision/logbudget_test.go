package decision

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

const okPolicy = `
version: 1
default: deny
hosts:
  - host: a.example
    rules:
      - { id: ok, methods: [GET], path: /ok, action: allow }
    default: deny
`

// flood asks svc n questions from src: every every-th one allowed, the
// others blocked, the blocked with a path of pathBytes.
func flood(svc *Service, src string, n, every, pathBytes int) (allowed int) {
	for i := range n {
		req := &egressv1.HttpRequest{SourceIp: src, Method: "GET", Scheme: "https", Host: "a.example", Port: 443,
			Path: "/" + strings.Repeat("b", pathBytes), ContentLength: -1}
		if every > 0 && i%every == every-1 {
			req.Path = "/ok"
			allowed++
		}
		svc.answer(&egressv1.Question{Id: uint64(i + 1), Kind: &egressv1.Question_Http{Http: req}})
	}
	return allowed
}

// TestBlockedFloodCannotHideAllowed floods an execution with blocked
// requests, small and at the url bound, with allowed ones among and after
// them: every allowed request stays in the log, the blocked ones take at
// most the share not kept for allowed ones, and the Summary counts what
// was left out, allowed and blocked apart.
func TestBlockedFloodCannotHideAllowed(t *testing.T) {
	tests := []struct {
		name             string
		blocked, every   int
		pathBytes        int
		wantBlockedInLog func(n int) bool
	}{
		{"many small blocked", 30000, 100, 10, func(n int) bool { return n == maxLogEntries-allowedReserveEntries }},
		{"blocked at the url bound", 30000, 100, 4 << 10, func(n int) bool { return n > 0 && n < maxLogEntries-allowedReserveEntries }},
		{"blocked only, allowed after", 30000, 0, 10, func(n int) bool { return n == maxLogEntries-allowedReserveEntries }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := NewRegistry()
			e := NewExecution("x1", compile(t, okPolicy), make(chan *executorv1.NetworkEvent, 1))
			defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
			svc := NewService(reg, nil, slog.New(slog.DiscardHandler))
			allowed := flood(svc, "10.88.0.2", tt.blocked, tt.every, tt.pathBytes)
			// More allowed ones once the log is as full as blocked ones
			// can make it.
			allowed += flood(svc, "10.88.0.2", 300, 1, 0)
			sum := e.Summary()
			var inLogAllowed, inLogBlocked int
			for _, l := range sum.Log {
				if l.GetBlocked() {
					inLogBlocked++
				} else {
					inLogAllowed++
				}
			}
			t.Logf("%d allowed and %d blocked in the log, %d omitted (%d allowed)", inLogAllowed, inLogBlocked, sum.LogOmitted, sum.LogOmittedAllowed)
			if inLogAllowed != allowed || sum.LogOmittedAllowed != 0 {
				t.Errorf("%d of %d allowed requests in the log, %d allowed omitted", inLogAllowed, allowed, sum.LogOmittedAllowed)
			}
			if !tt.wantBlockedInLog(inLogBlocked) {
				t.Errorf("%d blocked entries in the log", inLogBlocked)
			}
			if total := int(sum.Allowed + sum.Blocked); int(sum.LogOmitted) != total-len(sum.Log) || !sum.LogTruncated {
				t.Errorf("omitted %d, truncated %v, for %d requests and %d entries", sum.LogOmitted, sum.LogTruncated, total, len(sum.Log))
			}
		})
	}
}

// TestAllowedFloodOmitsAllowed: allowed requests may use the whole log;
// past it they are omitted and counted as allowed.
func TestAllowedFloodOmitsAllowed(t *testing.T) {
	reg := NewRegistry()
	e := NewExecution("x1", compile(t, okPolicy), make(chan *executorv1.NetworkEvent, 1))
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	svc := NewService(reg, nil, slog.New(slog.DiscardHandler))
	flood(svc, "10.88.0.2", maxLogEntries+500, 1, 0)
	flood(svc, "10.88.0.2", 200, 0, 10)
	sum := e.Summary()
	if len(sum.Log) != maxLogEntries || sum.LogOmitted != 700 || sum.LogOmittedAllowed != 500 {
		t.Errorf("log %d entries, omitted %d (%d allowed)", len(sum.Log), sum.LogOmitted, sum.LogOmittedAllowed)
	}
}

// TestGlobalLogBudget: executions share the budget; past it entries are
// omitted, and an execution's release gives its bytes back.
func TestGlobalLogBudget(t *testing.T) {
	budget := NewLogBudget(256 << 10)
	reg := NewRegistry()
	svc := NewService(reg, nil, slog.New(slog.DiscardHandler))
	execs := make([]*Execution, 2)
	for i, ip := range []string{"10.88.0.2", "10.88.0.3"} {
		execs[i] = NewExecution("x"+ip, compile(t, okPolicy), make(chan *executorv1.NetworkEvent, 1))
		execs[i].UseLogBudget(budget)
		defer reg.Register(netip.MustParseAddr(ip), execs[i])()
	}
	flood(svc, "10.88.0.2", 5000, 2, 100)
	first := execs[0].Summary()
	if first.LogOmitted == 0 || first.LogOmittedAllowed == 0 || budget.Used() > 256<<10 || budget.Used() < 250<<10 {
		t.Fatalf("first: %d entries, %d omitted (%d allowed), budget %d bytes used", len(first.Log), first.LogOmitted, first.LogOmittedAllowed, budget.Used())
	}
	flood(svc, "10.88.0.3", 100, 1, 0)
	if s := execs[1].Summary(); len(s.Log) != 0 || s.LogOmitted != 100 || s.LogOmittedAllowed != 100 {
		t.Fatalf("second, budget spent: %d entries, %d omitted (%d allowed)", len(s.Log), s.LogOmitted, s.LogOmittedAllowed)
	}
	execs[0].ReleaseLog()
	execs[0].ReleaseLog() // a second release gives nothing back twice
	if budget.Used() != 0 {
		t.Fatalf("budget %d bytes used after the only holder released", budget.Used())
	}
	flood(svc, "10.88.0.3", 100, 1, 0)
	if s := execs[1].Summary(); len(s.Log) != 100 || s.LogOmitted != 100 {
		t.Fatalf("second, budget released: %d entries, %d omitted", len(s.Log), s.LogOmitted)
	}
	// After its release an execution keeps its log but adds nothing.
	flood(svc, "10.88.0.2", 10, 1, 0)
	if s := execs[0].Summary(); len(s.Log) != len(first.Log) || budget.Used() <= 0 {
		t.Fatalf("released: %d entries, was %d; budget %d", len(s.Log), len(first.Log), budget.Used())
	}
	execs[1].ReleaseLog()
	if budget.Used() != 0 {
		t.Fatalf("budget %d bytes used after every release", budget.Used())
	}
}
