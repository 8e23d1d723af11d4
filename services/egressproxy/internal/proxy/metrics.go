package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts what the proxy did; a nil *Metrics records nothing.
type Metrics struct {
	requests *prometheus.CounterVec
	refusals *prometheus.CounterVec
	upstream prometheus.Histogram
}

// NewMetrics registers the proxy's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_egress_requests_total",
			Help: "HTTP requests by verdict (allowed, would_block, blocked) and protocol.",
		}, []string{"decision", "protocol"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_egress_connections_refused_total",
			Help: "Connections refused before a request could be read, by reason.",
		}, []string{"reason"}),
		upstream: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sandpit_egress_upstream_duration_seconds",
			Help:    "From sending an allowed request upstream to the end of its response.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
	}
	reg.MustRegister(m.requests, m.refusals, m.upstream)
	return m
}

func (m *Metrics) request(decision, protocol string) {
	if m != nil {
		m.requests.WithLabelValues(decision, protocol).Inc()
	}
}

func (m *Metrics) refusal(reason string) {
	if m != nil {
		m.refusals.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) upstreamDone(d time.Duration) {
	if m != nil {
		m.upstream.Observe(d.Seconds())
	}
}
