package dns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decidetest"
)

func TestDNS(t *testing.T) {
	fake := decidetest.Start(t, decidetest.StripeLike)
	conn, err := grpc.NewClient(fake.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client, err := decide.New(conn, decide.Config{
		Hello:   decide.Hello{Version: "test", CACertPEM: []byte("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n")},
		Timeout: 2 * time.Second,
		Log:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); client.Run(ctx) }()

	pc, ln := listenUDPAndTCP(t)
	reg := prometheus.NewRegistry()
	h := &Handler{Decider: client, AnswerIP: netip.MustParseAddr("198.18.0.1"), Metrics: NewMetrics(reg), Log: slog.New(slog.DiscardHandler)}
	serveDone := make(chan error, 1)
	go func() { serveDone <- Serve(ctx, h, pc, ln, 0) }()
	defer func() { cancel(); <-serveDone; <-runDone }()

	for !client.Connected() {
		time.Sleep(5 * time.Millisecond)
	}
	tests := []struct {
		net, name string
		qtype     uint16
		rcode     int
		answers   int
	}{
		{"udp", "api.stripe.test.", dns.TypeA, dns.RcodeSuccess, 1},
		{"tcp", "API.Stripe.TEST.", dns.TypeA, dns.RcodeSuccess, 1},
		{"udp", "api.stripe.test.", dns.TypeAAAA, dns.RcodeSuccess, 0},
		{"udp", "api.stripe.test.", dns.TypeMX, dns.RcodeSuccess, 0},
		{"udp", "blocked.test.", dns.TypeA, dns.RcodeNameError, 0},
		{"udp", "evil.example.", dns.TypeA, dns.RcodeNameError, 0},
		{"udp", "169.254.169.254.", dns.TypeA, dns.RcodeNameError, 0},
	}
	for _, tt := range tests {
		m := new(dns.Msg)
		m.SetQuestion(tt.name, tt.qtype)
		c := &dns.Client{Net: tt.net, Timeout: 3 * time.Second}
		r, _, err := c.Exchange(m, pc.LocalAddr().String())
		if err != nil {
			t.Fatalf("%s %s: %v", tt.net, tt.name, err)
		}
		if r.Rcode != tt.rcode || len(r.Answer) != tt.answers {
			t.Fatalf("%s %s %s: rcode %d answers %v", tt.net, tt.name, dns.TypeToString[tt.qtype], r.Rcode, r.Answer)
		}
		if tt.answers == 1 {
			a := r.Answer[0].(*dns.A)
			if !a.A.Equal(net.ParseIP("198.18.0.1")) {
				t.Fatalf("answer %v", a)
			}
		}
	}
	q := fake.WaitFor(t, "a DNS question", func(r *egressv1.DecideRequest) bool { return r.GetQuestion().GetDns() != nil }).GetQuestion().GetDns()
	if q.GetName() != "api.stripe.test" || q.GetType() != "A" || q.GetSourceIp() != "127.0.0.1" {
		t.Fatalf("decider got %v", q)
	}

	// Decider gone: NXDOMAIN, fail closed.
	fake.Stop()
	for client.Connected() {
		time.Sleep(5 * time.Millisecond)
	}
	m := new(dns.Msg)
	m.SetQuestion("api.stripe.test.", dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, pc.LocalAddr().String())
	if err != nil || r.Rcode != dns.RcodeNameError {
		t.Fatalf("without decider: %v %v", r, err)
	}

	// Answered: the four of api.stripe.test. NXDOMAIN: blocked.test,
	// evil.example, the IP literal, and the query without a decider.
	queries := func(decision string) float64 {
		return metricstest.Value(t, reg, "sandpit_egress_dns_queries_total", map[string]string{"decision": decision})
	}
	if a, d := queries("allow"), queries("deny"); a != 4 || d != 4 {
		t.Errorf("queries: %v allowed, %v denied; want 4 and 4", a, d)
	}
	metricstest.CheckLabel(t, reg, "decision", metricstest.Decisions)
}

// listenUDPAndTCP listens on one loopback port for both: the UDP port is
// free, the same TCP port may not be, so it tries a few.
func listenUDPAndTCP(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil, nil
}
