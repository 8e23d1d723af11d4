package server

import (
	"github.com/prometheus/client_golang/prometheus"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/capacity"
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
	}
	// Every termination exists from the start, so that a rate or an alert
	// on one that never happened yet reads 0 rather than nothing.
	for t := range executorv1.Termination_name {
		if t != int32(executorv1.Termination_TERMINATION_UNSPECIFIED) {
			m.executions.WithLabelValues(terminationLabel(executorv1.Termination(t)))
		}
	}
	m.executions.WithLabelValues(terminationError)
	reg.MustRegister(m.executions, m.duration, m.running, m.rejected, m.eventsDropped, m.logOmitted,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sandpit_execution_queue_waiting",
			Help: "Executions waiting for a slot.",
		}, func() float64 { return float64(slots.Waiting()) }),
	)
	return m
}
