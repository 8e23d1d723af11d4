package dns

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sandpit-run/sandpit/services/policy"
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
	for _, d := range policy.DecisionLabels {
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
