package decision

import (
	"github.com/prometheus/client_golang/prometheus"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Kinds of question, the kind label's values.
const (
	kindHTTP = "http"
	kindDNS  = "dns"
	kindTLS  = "tls"
)

// metrics count the service's answers; a nil *metrics records nothing.
type metrics struct {
	decisions *prometheus.CounterVec
}

// newMetrics registers the service's metrics on reg, nil for none: the
// decisions, and how many proxies hold a stream to r.
func newMetrics(reg prometheus.Registerer, r *Registry) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_decisions_total",
			Help: "Questions the egress proxy asked, by kind (http, dns, tls) and decision (allow, deny, would_block); kind=\"dns\" counts the DNS queries, kind=\"tls\" the TLS server names asked about before a leaf is minted.",
		}, []string{"kind", "decision"}),
	}
	// Every series exists from the start, so that a rate or an alert on
	// one that never happened yet reads 0 rather than nothing.
	for _, k := range []string{kindHTTP, kindDNS, kindTLS} {
		for _, d := range []policyv1.Decision{policyv1.Decision_DECISION_ALLOW, policyv1.Decision_DECISION_DENY, policyv1.Decision_DECISION_WOULD_BLOCK} {
			m.decisions.WithLabelValues(k, policy.DecisionLabel(d))
		}
	}
	reg.MustRegister(m.decisions, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sandpit_decide_streams_connected",
		Help: "Egress proxies holding a Decide stream that said hello; at 0 every sandbox request is denied.",
	}, func() float64 { return float64(r.streams()) }))
	return m
}

func (m *metrics) decided(kind string, d policyv1.Decision) {
	if m != nil {
		m.decisions.WithLabelValues(kind, policy.DecisionLabel(d)).Inc()
	}
}
