package dns

import (
	"github.com/prometheus/client_golang/prometheus"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// Metrics count the queries answered; a nil *Metrics records nothing.
type Metrics struct {
	queries *prometheus.CounterVec
}

// NewMetrics registers the resolver's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_egress_dns_queries_total",
			Help: "DNS queries answered, by decision: allow and would_block got an answer, deny got NXDOMAIN.",
		}, []string{"decision"}),
	}
	for _, d := range []string{"allow", "deny", "would_block"} {
		m.queries.WithLabelValues(d)
	}
	reg.MustRegister(m.queries)
	return m
}

func (m *Metrics) query(decision string) {
	if m != nil {
		m.queries.WithLabelValues(decision).Inc()
	}
}

// decisionLabel is the metric and log vocabulary of a decision: allow,
// deny or would_block; anything else the proxy treats as a deny.
func decisionLabel(d policyv1.Decision) string {
	switch d {
	case policyv1.Decision_DECISION_ALLOW:
		return "allow"
	case policyv1.Decision_DECISION_WOULD_BLOCK:
		return "would_block"
	default:
		return "deny"
	}
}
