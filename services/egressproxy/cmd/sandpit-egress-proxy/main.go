// Command sandpit-egress-proxy is sandpit's egress proxy: every TCP
// connection and DNS query a sandbox makes arrives here, and only what the
// executor's policy allows goes on.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/sandpit-run/sandpit/services/daemon/grpcserve"
	"github.com/sandpit-run/sandpit/services/daemon/program"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/config"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dialer"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dns"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/mitm"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/proxy"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/redact"
)

// healthInterval is how often the decide stream's state is copied to
// gRPC health.
const healthInterval = time.Second

// errNoStream is the health probe's failure: without a stream the proxy
// denies everything.
var errNoStream = errors.New("no decide stream to the executor")

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
		if err := grpcserve.AppendCertsFile(roots, cfg.UpstreamCA, "upstream-ca"); err != nil {
			return err
		}
	}

	d := dialer.New(dialer.Config{
		Overrides:    cfg.Upstreams,
		Allow:        cfg.UpstreamAllow,
		AllowSpecial: func(host string) bool { return slices.Contains(cfg.AllowPrivateHosts, host) },
	})
	// Each source address gets its own transport: no upstream connection
	// carries two tenants' requests.
	newUpstream := func() *http.Transport {
		t := proxy.NewTransport(d.DialContext, roots)
		t.ResponseHeaderTimeout = cfg.UpstreamResponseHeaderTimeout
		t.IdleConnTimeout = cfg.UpstreamIdleTimeout
		return t
	}

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
	creds, err := cfg.Decider.Credentials()
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(cfg.Decider.Target, append(decide.DialOptions(), grpc.WithTransportCredentials(creds))...)
	if err != nil {
		return fmt.Errorf("decider: %w", err)
	}
	defer conn.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	program.RegisterBuildInfo(reg, "sandpit-egress-proxy")
	decider, err := decide.New(conn, decide.Config{
		Hello: decide.Hello{
			Version:            program.Version(),
			CACertPEM:          ca.PEM,
			TransparentAddress: ln.Addr().String(),
			DNSAddress:         pc.LocalAddr().String(),
		},
		Timeout: cfg.DecideTimeout,
		Limits:  cfg.Limits,
		Metrics: decide.NewMetrics(reg),
		Log:     log,
	})
	if err != nil {
		return err
	}

	minter := mitm.NewMinter(ca, cfg.LeafCacheSize)
	minter.Register(reg)
	mintRate := cfg.LeafMintRate
	if mintRate == 0 {
		mintRate = -1 // the flag's 0 disables the bound
	}
	p := proxy.New(proxy.Config{
		Minter:      minter,
		Decider:     decider,
		Redactor:    redact.New(cfg.RedactQueryParams),
		NewUpstream: newUpstream,

		MaxConnsPerSource:      cfg.MaxConnsPerSource,
		WebSocket:              cfg.WebSocket,
		PassthroughIdleTimeout: cfg.PassthroughIdleTimeout,
		LeafMintRate:           mintRate,
		LeafMintBurst:          cfg.LeafMintBurst,
		Metrics:                proxy.NewMetrics(reg),
		Log:                    log,
	})
	// When an execution ends the executor says so: nothing its sandbox
	// opened may outlive it.
	decider.OnRelease(func(ip netip.Addr) { p.CloseSource(ip) })
	resolver := &dns.Handler{Decider: decider, AnswerIP: cfg.DNSAnswerIP, Metrics: dns.NewMetrics(reg), Log: log}
	// The gRPC listener serves only health (SERVING while the decide
	// stream is open) and reflection: the proxy offers no service.
	hs := health.NewServer()
	gsrv := grpcserve.New(grpcserve.Options{Registerer: reg, Log: log, Health: hs}, func(grpc.ServiceRegistrar) {})
	mlis, err := program.ListenMetrics(cfg.MetricsListen)
	if err != nil {
		return err
	}

	// The first server to fail ends them all; a signal ends them with no
	// error.
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		decider.Run(gctx)
		return nil
	})
	g.Go(func() error { return p.Serve(gctx, ln) })
	g.Go(func() error { return dns.Serve(gctx, resolver, pc, dnsTCP, cfg.DNSWorkers) })
	g.Go(func() error {
		// Stopped before it started serving is a shutdown too.
		if err := gsrv.Serve(glis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve grpc: %w", err)
		}
		return nil
	})
	g.Go(func() error { return program.ServeMetricsOn(gctx, mlis, reg) })
	g.Go(func() error {
		grpcserve.WatchHealth(gctx, hs, healthInterval, func(context.Context) error {
			if !decider.Connected() {
				return errNoStream
			}
			// Out of descriptors, the listener takes no connection:
			// sandboxes would hang, so the proxy is not serving.
			return p.Accepting()
		}, log)
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down")
		hs.Shutdown()
		gsrv.GracefulStop()
		return nil
	})
	log.Info("serving", "listen", ln.Addr().String(), "dns_listen", pc.LocalAddr().String(),
		"grpc_listen", glis.Addr().String(), "metrics_listen", cfg.MetricsListen, "decider", cfg.Decider.Target,
		"ca_sha256", ca.Fingerprint(), "upstream_overrides", len(cfg.Upstreams), "upstream_allow", fmt.Sprint(cfg.UpstreamAllow))
	return g.Wait()
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
