package decide_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decidetest"
)

// TestMetrics answers an HTTP and a DNS question, lets one time out and
// one find no stream, and reads what the registry says of each.
func TestMetrics(t *testing.T) {
	f := decidetest.Start(t, decidetest.StripeLike)
	conn, err := grpc.NewClient(f.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	reg := prometheus.NewRegistry()
	c, err := decide.New(conn, decide.Config{Hello: testHello, Timeout: 100 * time.Millisecond,
		Metrics: decide.NewMetrics(reg), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUp(t, c, true)

	const connected = "sandpit_egress_decide_stream_connected"
	failures := func(cause string) float64 {
		return metricstest.Value(t, reg, "sandpit_egress_decision_failures_total", map[string]string{"cause": cause})
	}
	latency := func(kind string) float64 {
		return metricstest.Value(t, reg, "sandpit_egress_decision_duration_seconds", map[string]string{"kind": kind})
	}
	if got := metricstest.Value(t, reg, connected, nil); got != 1 {
		t.Errorf("%s = %v with the stream open, want 1", connected, got)
	}
	if _, err := ask(c, "GET", "api.stripe.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AskDNS(context.Background(), decide.DNSQuestion{Name: "api.stripe.test", Type: "A"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ask(c, "GET", "silent.test"); err == nil {
		t.Fatal("silent.test was answered")
	}
	if got := latency("http"); got != 1 {
		t.Errorf("%v HTTP answers timed, want 1 (the timed-out question is a failure, not an answer)", got)
	}
	if got := latency("dns"); got != 1 {
		t.Errorf("%v DNS answers timed, want 1", got)
	}
	if got := failures("timeout"); got != 1 {
		t.Errorf("%v failures by timeout, want 1", got)
	}

	f.Stop()
	waitUp(t, c, false)
	if got := metricstest.Value(t, reg, connected, nil); got != 0 {
		t.Errorf("%s = %v with the executor gone, want 0", connected, got)
	}
	if _, err := ask(c, "GET", "api.stripe.test"); err == nil {
		t.Fatal("answered without a stream")
	}
	if got := failures("no_stream"); got != 1 {
		t.Errorf("%v failures for no stream, want 1", got)
	}
	for _, cause := range []string{"stream_lost", "send_queue_full", "abandoned", "message_too_large"} {
		if got := failures(cause); got != 0 {
			t.Errorf("%v failures by %s, want 0", got, cause)
		}
	}
	metricstest.CheckLabel(t, reg, "kind", []string{"http", "dns", "tls"})
	metricstest.CheckLabel(t, reg, "cause", []string{"no_stream", "timeout", "stream_lost", "send_queue_full", "abandoned", "message_too_large", "stalled"})
	metricstest.CheckLabel(t, reg, "limit", []string{"rate", "in_flight"})
}
