package decide

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Kinds of question, the kind label's values.
const (
	kindHTTP = "http"
	kindDNS  = "dns"
	kindTLS  = "tls"
)

// Causes of a fail-closed deny, the cause label's values: why the verdict
// was the proxy's own rather than the executor's.
const (
	causeNoStream      = "no_stream"
	causeTimeout       = "timeout"
	causeStreamLost    = "stream_lost"
	causeSendQueueFull = "send_queue_full"
	causeAbandoned     = "abandoned"
	causeTooLarge      = "message_too_large"
	causeStalled       = "stalled"
)

// Metrics count how the executor answers; a nil *Metrics records nothing.
type Metrics struct {
	latency   *prometheus.HistogramVec
	failures  *prometheus.CounterVec
	connected prometheus.Gauge
	stalled   prometheus.Gauge
	limited   *prometheus.CounterVec
}

// NewMetrics registers the decide client's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sandpit_egress_decision_duration_seconds",
			Help: "From asking the executor to its answer, by kind (http, dns, tls); fail-closed denies are in sandpit_egress_decision_failures_total instead.",
			// From a loopback round trip to past the default 2s timeout.
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_egress_decision_failures_total",
			Help: "Questions denied by the proxy itself because the executor did not answer, by cause (no_stream, timeout, stream_lost, send_queue_full, abandoned, message_too_large, stalled).",
		}, []string{"cause"}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sandpit_egress_decide_stream_connected",
			Help: "1 while the Decide stream to the executor is open and the hello sent, else 0: everything is denied.",
		}),
		stalled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sandpit_egress_decide_stream_stalled",
			Help: "1 while a question went unanswered and nothing has been heard from the executor since: everything is denied at once.",
		}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_egress_rate_limited_total",
			Help: "Questions refused without asking because their source was over a per-source limit, by kind (http, dns) and limit (rate, in_flight).",
		}, []string{"kind", "limit"}),
	}
	// Every series exists from the start, so that a rate or an alert on
	// one that never happened yet reads 0 rather than nothing.
	for _, k := range []string{kindHTTP, kindDNS, kindTLS} {
		m.latency.WithLabelValues(k)
	}
	for _, c := range []string{causeNoStream, causeTimeout, causeStreamLost, causeSendQueueFull, causeAbandoned, causeTooLarge, causeStalled} {
		m.failures.WithLabelValues(c)
	}
	for _, k := range []string{kindHTTP, kindDNS} {
		for _, l := range []string{limitRate, limitInFlight} {
			m.limited.WithLabelValues(k, l)
		}
	}
	reg.MustRegister(m.latency, m.failures, m.connected, m.stalled, m.limited)
	return m
}

func (m *Metrics) answered(kind string, d time.Duration) {
	if m != nil {
		m.latency.WithLabelValues(kind).Observe(d.Seconds())
	}
}

func (m *Metrics) failed(cause string) {
	if m != nil {
		m.failures.WithLabelValues(cause).Inc()
	}
}

func (m *Metrics) setConnected(up bool) {
	if m == nil {
		return
	}
	if up {
		m.connected.Set(1)
	} else {
		m.connected.Set(0)
	}
}

func (m *Metrics) setStalled(on bool) {
	if m == nil {
		return
	}
	if on {
		m.stalled.Set(1)
	} else {
		m.stalled.Set(0)
	}
}

func (m *Metrics) limitedBy(kind, limit string) {
	if m != nil {
		m.limited.WithLabelValues(kind, limit).Inc()
	}
}
