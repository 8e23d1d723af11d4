package server

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/capacity"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/policy"
)

// metricsDuration buckets span a fast hello world to the maximum timeout.
var metricsDuration = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

// Metrics are the executor's own Prometheus metrics; the gRPC ones come from
// the middleware.
type Metrics struct {
	executions *prometheus.CounterVec
	duration   prometheus.Histogram
	running    prometheus.Gauge
	rejected   *prometheus.CounterVec
	// eventsDropped and logOmitted add up what each execution's Result
	// reported as network_events_dropped and network_log_omitted.
	eventsDropped prometheus.Counter
	logOmitted    prometheus.Counter
	decisions     *decisionCounter
	// starts counts executions whose program started, by path: warm (a
	// sandbox booted ahead of time) or cold.
	starts *prometheus.CounterVec
}

// NewMetrics registers the executor's metrics on reg.
func NewMetrics(reg prometheus.Registerer, slots *capacity.Limiter) *Metrics {
	m := &Metrics{
		executions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_executions_total",
			Help: "Executions ended, by termination: exited, timeout, oom, output_limit, shutdown, or error when the sandbox failed.",
		}, []string{"termination"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sandpit_execution_wall_seconds",
			Help:    "Wall time of executions from start to exit.",
			Buckets: metricsDuration,
		}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sandpit_executions_running",
			Help: "Executions whose sandbox is being prepared, running or cleaned up.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_executions_rejected_total",
			Help: "Executions refused before or while their sandbox was set up, by reason (the ErrorInfo reason, lowercase: slots_full, invalid_argument, ...).",
		}, []string{"reason"}),
		eventsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sandpit_network_events_dropped_total",
			Help: "Live network events not delivered because an execution's stream was behind (each Result's network_events_dropped).",
		}),
		logOmitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sandpit_network_log_omitted_total",
			Help: "Requests left out of an execution's network log by its bounds (each Result's network_log_omitted).",
		}),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_execution_starts_total",
			Help: "Executions whose sandbox was set up, by path: warm (booted ahead of time, from the warm pool) or cold (created for it).",
		}, []string{"path"}),
	}
	m.starts.WithLabelValues("warm")
	m.starts.WithLabelValues("cold")
	// Every termination exists from the start, so that a rate or an alert
	// on one that never happened yet reads 0 rather than nothing.
	for t := range executorv1.Termination_name {
		if t != int32(executorv1.Termination_TERMINATION_UNSPECIFIED) {
			m.executions.WithLabelValues(terminationLabel(executorv1.Termination(t)))
		}
	}
	m.executions.WithLabelValues(terminationError)
	m.decisions = newDecisionCounter(maxHostsPerTenant, maxDecisionSeries)
	reg.MustRegister(m.decisions.vec, m.executions, m.duration, m.running, m.rejected, m.eventsDropped, m.logOmitted, m.starts,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sandpit_execution_queue_waiting",
			Help: "Executions waiting for a slot.",
		}, func() float64 { return float64(slots.Waiting()) }),
	)
	return m
}

// Bounds on the series of sandpit_requests_decided_total: a sandbox names
// the hosts it asks for, so a tenant's hosts beyond the first
// maxHostsPerTenant are counted as host="_other", and past
// maxDecisionSeries series in all every label but decision is "_other".
const (
	maxHostsPerTenant = 64
	maxDecisionSeries = 10000
	otherLabel        = "_other"
)

// decisionCounter counts HTTP decisions by tenant, host, rule, source and
// decision, with bounded cardinality.
type decisionCounter struct {
	vec                 *prometheus.CounterVec
	maxHosts, maxSeries int

	mu    sync.Mutex
	hosts map[string]map[string]bool // tenant -> hosts with a series
	// series holds each series' counter (tenant, host, rule, source,
	// decision), so a decision costs no label hashing.
	series map[[5]string]prometheus.Counter
}

func newDecisionCounter(maxHosts, maxSeries int) *decisionCounter {
	return &decisionCounter{
		vec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_requests_decided_total",
			Help: "HTTP requests of sandboxes decided, by tenant (empty without tenants), host, rule, source (operator, tenant, token, inline, or empty when a limit or the proxy decided) and decision (allow, deny, would_block). A tenant's hosts past its first 64 are host=\"_other\"; past 10000 series every label but decision is \"_other\".",
		}, []string{"tenant", "host", "rule", "source", "decision"}),
		maxHosts:  maxHosts,
		maxSeries: maxSeries,
		hosts:     map[string]map[string]bool{},
		series:    map[[5]string]prometheus.Counter{},
	}
}

// observe counts one decision of tenant's execution.
func (c *decisionCounter) observe(tenant string, o decision.Observed) {
	l := [5]string{tenant, o.Host, o.RuleID, o.Source, policy.DecisionLabel(o.Decision)}
	c.mu.Lock()
	defer c.mu.Unlock()
	hs := c.hosts[tenant]
	if hs == nil {
		hs = map[string]bool{}
		c.hosts[tenant] = hs
	}
	if !hs[l[1]] {
		if len(hs) < c.maxHosts {
			hs[l[1]] = true
		} else {
			l[1] = otherLabel
		}
	}
	ctr, ok := c.series[l]
	if !ok {
		if len(c.series) >= c.maxSeries {
			l = [5]string{otherLabel, otherLabel, otherLabel, otherLabel, l[4]}
		}
		if ctr, ok = c.series[l]; !ok {
			ctr = c.vec.WithLabelValues(l[:]...)
			c.series[l] = ctr
		}
	}
	ctr.Inc()
}
