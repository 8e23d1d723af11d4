package decision

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
)

// TestMetrics asks HTTP and DNS questions the policy allows and denies,
// with one or two proxies connected: each answer is counted once by kind
// and decision, and the gauge follows the streams.
func TestMetrics(t *testing.T) {
	reg := NewRegistry()
	e := NewExecution("x1", compile(t, testPolicy), make(chan *executorv1.NetworkEvent, 64))
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	m := prometheus.NewRegistry()
	conn := serveMetrics(t, reg, m)
	const streams = "sandpit_decide_streams_connected"
	if got := metricstest.Value(t, m, streams, nil); got != 0 {
		t.Errorf("%s = %v before any hello, want 0", streams, got)
	}
	s := open(t, conn)
	if err := s.Send(hello(testCA)); err != nil {
		t.Fatal(err)
	}
	waitConnected(t, reg, true)

	ask(t, s, httpReq(1, "10.88.0.2", "GET", "api.stripe.com", "/v1/products"))
	ask(t, s, httpReq(2, "10.88.0.2", "POST", "api.stripe.com", "/v1/charges"))
	ask(t, s, httpReq(3, "10.88.0.9", "GET", "api.stripe.com", "/v1/products")) // no execution
	ask(t, s, dnsReq(4, "10.88.0.2", "api.stripe.com"))
	ask(t, s, dnsReq(5, "10.88.0.2", "evil.example"))

	second := open(t, conn)
	if err := second.Send(hello(testCA)); err != nil {
		t.Fatal(err)
	}
	ask(t, second, dnsReq(1, "10.88.0.2", "api.stripe.com")) // answered: the hello was taken
	if got := metricstest.Value(t, m, streams, nil); got != 2 {
		t.Errorf("%s = %v with two proxies, want 2", streams, got)
	}

	tests := []struct {
		kind, decision string
		want           float64
	}{
		{"http", "allow", 1},
		{"http", "deny", 2},
		{"http", "would_block", 0},
		{"dns", "allow", 2},
		{"dns", "deny", 1},
	}
	for _, tt := range tests {
		got := metricstest.Value(t, m, "sandpit_decisions_total", map[string]string{"kind": tt.kind, "decision": tt.decision})
		if got != tt.want {
			t.Errorf("decisions{kind=%q,decision=%q} = %v, want %v", tt.kind, tt.decision, got, tt.want)
		}
	}
	metricstest.CheckLabel(t, m, "decision", metricstest.Decisions)
	metricstest.CheckLabel(t, m, "kind", []string{"http", "dns", "tls"})
}
