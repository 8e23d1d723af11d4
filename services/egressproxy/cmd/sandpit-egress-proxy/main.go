// Command sandpit-egress-proxy is sandpit's egress proxy: every TCP
// connection and DNS query a sandbox makes arrives here, and only what the
// executor's policy allows goes on.
package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sandpit-run/sandpit/services/egressproxy/internal/config"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dialer"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dns"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/mitm"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/proxy"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/redact"
	"github.com/sandpit-run/sandpit/services/lib/grpcserve"
	"github.com/sandpit-run/sandpit/services/lib/program"
)

func main() {
	program.Main("sandpit-egress-proxy", func(args []string, getenv func(string) string) (config.Config, string, error) {
		cfg, err := config.Parse(args, getenv)
		return cfg, cfg.LogLevel, err
	}, run)
}

func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	ca, err := loadCA(cfg)
	if err != nil {
		return err
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if cfg.UpstreamCA != "" {
		pem, err := os.ReadFile(cfg.UpstreamCA)
		if err != nil {
			return fmt.Errorf("upstream-ca: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("upstream-ca %s: no certificates", cfg.UpstreamCA)
		}
	}

	d := dialer.New(dialer.Config{
		Overrides:    cfg.Upstreams,
		Allow:        cfg.UpstreamAllow,
		AllowSpecial: func(host string) bool { return slices.Contains(cfg.AllowPrivateHosts, host) },
	})
	transport := proxy.NewTransport(d.DialContext, roots)
	defer transport.CloseIdleConnections()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	pc, err := net.ListenPacket("udp", cfg.DNSListen)
	if err != nil {
		return fmt.Errorf("dns listen udp: %w", err)
	}
	dnsTCP, err := net.Listen("tcp", cfg.DNSListen)
	if err != nil {
		return fmt.Errorf("dns listen tcp: %w", err)
	}
	glis, err := net.Listen("tcp", cfg.GRPCListen)
	if err != nil {
		return fmt.Errorf("grpc listen: %w", err)
	}

	// The proxy dials the executor, never the other way round; the hello
	// tells it the CA its sandboxes must trust.
	conn, err := grpc.NewClient(cfg.Decider, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("decider: %w", err)
	}
	defer conn.Close()
	decider, err := decide.New(conn, decide.Config{
		Hello: decide.Hello{
			Version:            program.Version(),
			CACertPEM:          ca.PEM,
			TransparentAddress: ln.Addr().String(),
			DNSAddress:         pc.LocalAddr().String(),
		},
		Timeout: cfg.DecideTimeout,
		Log:     log,
	})
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p := proxy.New(proxy.Config{
		Minter:   mitm.NewMinter(ca, cfg.LeafCacheSize),
		Decider:  decider,
		Redactor: redact.New(cfg.RedactQueryParams),
		Upstream: transport,
		Metrics:  proxy.NewMetrics(reg),
		Log:      log,
	})
	// The gRPC listener serves only health (SERVING while the decide
	// stream is open) and reflection: the proxy offers no service.
	hs := health.NewServer()
	gsrv := grpcserve.New(grpcserve.Options{Registerer: reg, Log: log, Health: hs}, func(grpc.ServiceRegistrar) {})

	stopMetrics, err := program.ServeMetrics(cfg.MetricsListen, reg)
	if err != nil {
		return err
	}
	defer stopMetrics()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 4)
	wg.Go(func() { decider.Run(ctx) })
	wg.Go(func() { errc <- p.Serve(ctx, ln) })
	wg.Go(func() {
		errc <- dns.Serve(ctx, &dns.Handler{Decider: decider, AnswerIP: cfg.DNSAnswerIP, Log: log}, pc, dnsTCP)
	})
	wg.Go(func() { errc <- gsrv.Serve(glis) })
	wg.Go(func() {
		<-ctx.Done()
		hs.Shutdown()
		gsrv.GracefulStop()
	})
	wg.Go(func() { watchHealth(ctx, decider, hs, log) })
	log.Info("serving", "listen", ln.Addr().String(), "dns_listen", pc.LocalAddr().String(),
		"grpc_listen", glis.Addr().String(), "metrics_listen", cfg.MetricsListen, "decider", cfg.Decider,
		"ca_sha256", ca.Fingerprint(), "upstream_overrides", len(cfg.Upstreams), "upstream_allow", fmt.Sprint(cfg.UpstreamAllow))

	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return nil
	case err := <-errc:
		cancel()
		return err
	}
}

func loadCA(cfg config.Config) (*mitm.CA, error) {
	switch {
	case cfg.CACert != "":
		return mitm.LoadCA(cfg.CACert, cfg.CAKey)
	case cfg.CADir != "":
		return mitm.LoadOrCreateCA(cfg.CADir)
	default:
		return mitm.NewCA("sandpit egress proxy CA")
	}
}

// watchHealth reports NOT_SERVING while there is no decide stream: the
// proxy then denies everything.
func watchHealth(ctx context.Context, d *decide.Client, hs *health.Server, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := healthpb.HealthCheckResponse_UNKNOWN
	for {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if d.Connected() {
			st = healthpb.HealthCheckResponse_SERVING
		}
		if st != last {
			log.Info("health", "status", st.String())
			hs.SetServingStatus("", st)
			last = st
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
