package sandbox

import "github.com/prometheus/client_golang/prometheus"

// Metrics count what goes wrong at a sandbox's end; the operator's alerts
// for leaks start here.
type Metrics struct {
	// CleanupFailures counts removal steps that failed (step: container,
	// task, code_dir, reap).
	CleanupFailures *prometheus.CounterVec
	// Stuck counts sandboxes that did not end within a bound (stage: kill,
	// drain).
	Stuck *prometheus.CounterVec
	// TeardownsInFlight are the sandboxes being removed after their
	// Result; Teardowns counts the removals by result (ok, failed).
	TeardownsInFlight prometheus.Gauge
	Teardowns         *prometheus.CounterVec
}

// NewMetrics returns the metrics registered on reg; a nil reg registers
// them nowhere.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		CleanupFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_sandbox_cleanup_failures_total",
			Help: "Sandbox removal steps that failed and were left for the reaper, by step.",
		}, []string{"step"}),
		Stuck: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_sandbox_stuck_total",
			Help: "Sandboxes that did not end within a bound, by stage (kill, drain).",
		}, []string{"stage"}),
		TeardownsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sandpit_sandbox_teardowns_in_flight",
			Help: "Sandboxes whose program ended and which are being removed (task, container, snapshot, files) in the background.",
		}),
		Teardowns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_sandbox_teardowns_total",
			Help: "Sandboxes removed after their execution, by result: ok, or failed when something was left for the reaper.",
		}, []string{"result"}),
	}
	m.Teardowns.WithLabelValues("ok")
	m.Teardowns.WithLabelValues("failed")
	if reg != nil {
		reg.MustRegister(m.CleanupFailures, m.Stuck, m.TeardownsInFlight, m.Teardowns)
	}
	return m
}
