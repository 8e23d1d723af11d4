package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
	"github.com/sandpit-run/sandpit/services/executor/internal/capacity"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/policy"
)

// summaryNetwork is an attachment whose execution reports sum.
type summaryNetwork struct{ sum decision.Summary }

func (summaryNetwork) Contribute(*sandbox.Spec)        {}
func (summaryNetwork) Close() error                    { return nil }
func (summaryNetwork) Release() error                  { return nil }
func (n summaryNetwork) Summary() decision.Summary     { return n.sum }
func (summaryNetwork) Problem() string                 { return "" }
func (summaryNetwork) Observe(func(decision.Observed)) {}
func (summaryNetwork) UseSecrets([]decision.Secret)    {}

type summaryEgress struct{ sum decision.Summary }

func (e summaryEgress) Attach(context.Context, string, *policy.Compiled, chan<- *executorv1.NetworkEvent) (Network, error) {
	return summaryNetwork(e), nil
}

func (summaryEgress) Policy(narrow *policy.Compiled) *policy.Compiled { return policy.Chain(narrow) }
func (summaryEgress) Prepare() (Reservation, error)                   { return nil, errNoWarm }

// TestMetrics runs executions that exit, time out and fail, and one that
// is refused: each is counted once under the shared vocabulary, and what
// the network lost is added up.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	slots := capacity.New(4, 4)
	run := func(out sandbox.Outcome, err error) func(context.Context, sandbox.Spec, func()) (sandbox.Outcome, error) {
		return func(_ context.Context, _ sandbox.Spec, started func()) (sandbox.Outcome, error) {
			started()
			return out, err
		}
	}
	sb := &fakeSandboxes{}
	s := New(context.Background(), Config{
		Defaults:     limits.Defaults,
		Maxima:       limits.Maxima,
		DefaultImage: "sandpit.local/node:24",
		NodePath:     "/usr/local/bin/node",
		Egress:       summaryEgress{decision.Summary{DroppedEvents: 3, LogOmitted: 2}},
	}, sb, slots, NewMetrics(reg, slots), slog.New(slog.NewTextHandler(io.Discard, nil)))
	execute := func(req *executorv1.ExecuteRequest) error {
		return s.Execute(req, &fakeStream{ctx: context.Background()})
	}

	sb.run = run(sandbox.Outcome{WallTime: time.Millisecond}, nil)
	if err := execute(&executorv1.ExecuteRequest{Code: "1"}); err != nil {
		t.Fatal(err)
	}
	sb.run = run(sandbox.Outcome{TimedOut: true, Killed: true, WallTime: time.Second}, nil)
	if err := execute(&executorv1.ExecuteRequest{Code: "1"}); err != nil {
		t.Fatal(err)
	}
	sb.run = run(sandbox.Outcome{}, errors.New("runc: exploded"))
	if err := execute(&executorv1.ExecuteRequest{Code: "1"}); err == nil {
		t.Fatal("a failed sandbox succeeded")
	}
	if err := execute(&executorv1.ExecuteRequest{}); err == nil {
		t.Fatal("a request without code was run")
	}

	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"sandpit_executions_total", map[string]string{"termination": "exited"}, 1},
		{"sandpit_executions_total", map[string]string{"termination": "timeout"}, 1},
		{"sandpit_executions_total", map[string]string{"termination": "error"}, 1},
		{"sandpit_executions_total", map[string]string{"termination": "oom"}, 0},
		{"sandpit_execution_wall_seconds", nil, 2},
		{"sandpit_executions_rejected_total", map[string]string{"reason": "invalid_argument"}, 1},
		// Three executions had the network, the failed one included.
		{"sandpit_network_events_dropped_total", nil, 9},
		{"sandpit_network_log_omitted_total", nil, 6},
	}
	for _, tt := range tests {
		if got := metricstest.Value(t, reg, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	metricstest.CheckLabel(t, reg, "termination", metricstest.Terminations)
	var reasons []string
	for _, r := range []string{ReasonInvalidArgument, ReasonImageNotAllowed, ReasonImageNotFound, ReasonSlotsFull,
		ReasonAddressPoolExhausted, ReasonContainerdUnavailable, ReasonSandboxStuck, ReasonCallerNotReading,
		ReasonDeadlineExceeded, ReasonCancelled, ReasonInternal} {
		reasons = append(reasons, strings.ToLower(r))
	}
	metricstest.CheckLabel(t, reg, "reason", reasons)
}

// TestDecisionCounterIsBounded: a sandbox naming ever new hosts adds at
// most maxHosts series for its tenant, the rest go to host="_other", and
// past maxSeries every series but the decision is "_other"; no count is
// lost.
func TestDecisionCounterIsBounded(t *testing.T) {
	c := newDecisionCounter(3, 8)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.vec)
	for i := range 10 {
		c.observe("acme", decision.Observed{Host: fmt.Sprintf("h%d.example.com", i), RuleID: "default", Source: "tenant", Decision: policyv1.Decision_DECISION_WOULD_BLOCK})
	}
	for i := range 10 {
		c.observe(fmt.Sprintf("t%d", i), decision.Observed{Host: "api.stripe.com", RuleID: "r", Source: "operator", Decision: policyv1.Decision_DECISION_ALLOW})
	}
	if got := testutil.CollectAndCount(c.vec); got > 8+2 {
		t.Errorf("%d series, want at most 8 and the _other ones", got)
	}
	if got := testutil.ToFloat64(c.vec.WithLabelValues("acme", otherLabel, "default", "tenant", "would_block")); got != 7 {
		t.Errorf("acme's hosts past the first 3 counted %v, want 7", got)
	}
	if got := testutil.ToFloat64(c.vec.WithLabelValues("acme", "h0.example.com", "default", "tenant", "would_block")); got != 1 {
		t.Errorf("acme's first host counted %v, want 1", got)
	}
	var total float64
	for _, d := range []string{"allow", "would_block"} {
		for _, l := range [][4]string{{otherLabel, otherLabel, otherLabel, otherLabel}} {
			total += testutil.ToFloat64(c.vec.WithLabelValues(l[0], l[1], l[2], l[3], d))
		}
	}
	// 4 acme series and 4 tenants fill the 8; the 6 other tenants overflow.
	if total != 6 {
		t.Errorf("overflow series counted %v, want 6", total)
	}
}
