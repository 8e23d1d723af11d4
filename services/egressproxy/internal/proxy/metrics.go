package proxy

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sandpit-run/sandpit/services/policy"
)

// Classes of refused connections, the reason label's values; the log and
// the report to the executor carry the reason in words.
const (
	refusedNoOriginalDst   = "no_original_destination"
	refusedH2CPrior        = "h2c_prior_knowledge"
	refusedNotHTTP         = "not_http_or_tls"
	refusedBadClientHello  = "malformed_client_hello"
	refusedNoSNI           = "no_sni"
	refusedInvalidSNI      = "invalid_sni"
	refusedHandshakeFailed = "tls_handshake_failed"
	refusedTooManyConns    = "too_many_connections"
	refusedSNINotAllowed   = "sni_not_allowed"
	refusedSNIUndecided    = "sni_undecided"
	refusedMintRate        = "leaf_mint_rate"
)

// Metrics counts what the proxy did; a nil *Metrics records nothing.
type Metrics struct {
	requests *prometheus.CounterVec
	refusals *prometheus.CounterVec
	upstream prometheus.Histogram
	accepts  prometheus.Counter
	limits   *prometheus.CounterVec
	// transports is how many sources hold their own upstream transport.
	transports prometheus.Gauge
}

// limitConnections is the per-source bound's limit label value.
const limitConnections = "connections"

// NewMetrics registers the proxy's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_egress_requests_total",
			Help: "HTTP requests by decision (allow, deny, would_block) and protocol (http/1.1, http/2).",
		}, []string{"decision", "protocol"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_egress_connections_refused_total",
			Help: "Connections refused before a request could be read, by reason (not_http_or_tls, no_sni, tls_handshake_failed, ...).",
		}, []string{"reason"}),
		upstream: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sandpit_egress_upstream_duration_seconds",
			Help:    "From sending an allowed request upstream to the end of its response.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		accepts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sandpit_egress_accept_errors_total",
			Help: "Failed accepts on the transparent listener (out of file descriptors, typically); each is retried.",
		}),
		limits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_egress_source_limit_total",
			Help: "Connections refused because their source address was at its per-source bound, by limit (connections); requests over a per-source limit are in sandpit_egress_rate_limited_total.",
		}, []string{"limit"}),
		transports: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sandpit_egress_upstream_transports",
			Help: "Upstream transports held, one per source address with a connection open: no upstream connection serves two sources.",
		}),
	}
	m.limits.WithLabelValues(limitConnections)
	// Every series exists from the start, so that a rate or an alert on
	// one that never happened yet reads 0 rather than nothing.
	for _, d := range policy.DecisionLabels {
		for _, p := range []string{"http/1.1", "http/2"} {
			m.requests.WithLabelValues(d, p)
		}
	}
	for _, r := range []string{refusedNoOriginalDst, refusedH2CPrior, refusedNotHTTP, refusedBadClientHello, refusedNoSNI, refusedInvalidSNI, refusedHandshakeFailed, refusedTooManyConns, refusedSNINotAllowed, refusedSNIUndecided, refusedMintRate} {
		m.refusals.WithLabelValues(r)
	}
	reg.MustRegister(m.requests, m.refusals, m.upstream, m.accepts, m.limits, m.transports)
	return m
}

func (m *Metrics) request(decision, protocol string) {
	if m != nil {
		m.requests.WithLabelValues(decision, strings.ToLower(protocol)).Inc()
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

func (m *Metrics) acceptError() {
	if m != nil {
		m.accepts.Inc()
	}
}

func (m *Metrics) sourceLimit(limit string) {
	if m != nil {
		m.limits.WithLabelValues(limit).Inc()
	}
}

func (m *Metrics) upstreamTransports(n int) {
	if m != nil {
		m.transports.Set(float64(n))
	}
}
