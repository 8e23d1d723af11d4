// Command sandpit-executor serves sandpit.executor.v1.ExecutorService: it
// runs untrusted Node.js code in fresh, hardened containerd sandboxes.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/capacity"
	"github.com/sandpit-run/sandpit/services/executor/internal/config"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/egress"
	"github.com/sandpit-run/sandpit/services/executor/internal/netns"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/executor/internal/server"
	"github.com/sandpit-run/sandpit/services/lib/grpcserve"
	"github.com/sandpit-run/sandpit/services/lib/program"
)

func main() {
	program.Main("sandpit-executor", func(args []string, getenv func(string) string) (config.Config, string, error) {
		cfg, err := config.Parse(args, getenv)
		return cfg, cfg.LogLevel, err
	}, run)
}

func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	rt, err := sandbox.New(ctx, sandbox.Config{
		Address:     cfg.ContainerdAddress,
		Namespace:   cfg.ContainerdNamespace,
		Snapshotter: cfg.Snapshotter,
		RuncPath:    cfg.RuncPath,
		StateDir:    cfg.StateDir,
		UID:         uint32(cfg.SandboxUID),
		GID:         uint32(cfg.SandboxGID),
	}, log)
	if err != nil {
		return err
	}
	defer rt.Close()

	swept, err := rt.Sweep(ctx)
	log.Info("removed leftovers of a previous executor", "containers", swept.Containers, "tasks", swept.Tasks,
		"snapshots", swept.Snapshots, "code_dirs", swept.CodeDirs)
	if err != nil {
		return fmt.Errorf("sweep leftovers: %w", err)
	}
	if _, err := rt.ResolveImage(ctx, cfg.Image); err != nil {
		return fmt.Errorf("default image: %w (make image imports it)", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var (
		eg      *egress.Egress
		egCfg   server.Egress
		decider *grpc.Server
	)
	if cfg.EgressProxy != "" {
		eg, err = egress.New(ctx, egress.Config{
			Pool:       cfg.AddressPool,
			ProxyGRPC:  cfg.EgressProxy,
			ProxyPort:  uint16(cfg.ProxyPort),
			DNSPort:    uint16(cfg.DNSPort),
			Table:      cfg.NftTable,
			PolicyFile: cfg.PolicyFile,
			IfPrefix:   cfg.VethPrefix,
			NamePrefix: netns.DefaultNamePrefix,
		}, log)
		if err != nil {
			return fmt.Errorf("egress: %w", err)
		}
		defer func() {
			if err := eg.Close(); err != nil {
				log.Error("close egress", "error", err)
			}
		}()
		egCfg = eg
		// The proxy's decisions have a listener of their own, so that
		// the Execute port can be exposed to callers while only the proxy
		// reaches this one.
		dlis, err := net.Listen("tcp", cfg.DecisionListen)
		if err != nil {
			return fmt.Errorf("listen decisions: %w", err)
		}
		svc := decision.NewService(eg.Registry(), log)
		decider = grpcserve.New(grpcserve.Options{
			Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"server": "decision"}, reg),
			Log:        log,
			Health:     health.NewServer(),
		}, func(r grpc.ServiceRegistrar) { policyv1.RegisterPolicyDecisionServiceServer(r, svc) })
		go func() { _ = decider.Serve(dlis) }()
		// Stopped last: the proxy needs decisions while executions finish.
		defer decider.Stop()
		log.Info("serving decisions", "decision_listen", dlis.Addr().String())
	}
	slots := capacity.New(cfg.MaxConcurrent, cfg.MaxQueue)
	// Ending this context kills every running sandbox; it outlives ctx by
	// the shutdown grace.
	shutdownCtx, killAll := context.WithCancel(context.WithoutCancel(ctx))
	defer killAll()
	svc := server.New(shutdownCtx, server.Config{
		Defaults:       cfg.Defaults,
		Maxima:         cfg.Maxima,
		DefaultImage:   cfg.Image,
		ImageAllowlist: cfg.ImageAllowlist,
		NodePath:       cfg.NodePath,
		Egress:         egCfg,
	}, rt, slots, server.NewMetrics(reg, slots), log)
	hs := health.NewServer()
	srv := server.NewGRPCServer(svc, hs, prometheus.WrapRegistererWith(prometheus.Labels{"server": "executor"}, reg), int(cfg.Maxima.CodeBytes)+1<<20, log)

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	stopMetrics, err := program.ServeMetrics(cfg.MetricsListen, reg)
	if err != nil {
		return err
	}
	defer stopMetrics()

	healthCtx, stopHealth := context.WithCancel(ctx)
	healthDone := make(chan struct{})
	go func() {
		defer close(healthDone)
		watchHealth(healthCtx, rt, hs, log)
	}()
	defer func() { stopHealth(); <-healthDone }()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	log.Info("serving", "listen", lis.Addr().String(), "metrics_listen", cfg.MetricsListen, "image", cfg.Image)

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", cfg.ShutdownGrace.String())
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
		return nil
	case <-time.After(cfg.ShutdownGrace):
	}
	log.Warn("grace over, killing running executions", "running", slots.InFlight())
	killAll()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		srv.Stop()
	}
	return nil
}

// watchHealth keeps the gRPC health status in step with containerd.
func watchHealth(ctx context.Context, rt *sandbox.Runtime, hs *health.Server, log *slog.Logger) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	last := healthpb.HealthCheckResponse_UNKNOWN
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := rt.Healthy(cctx)
		cancel()
		st := healthpb.HealthCheckResponse_SERVING
		if err != nil {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		if st != last {
			log.Info("health", "status", st.String(), "error", err)
			hs.SetServingStatus("", st)
			hs.SetServingStatus("sandpit.executor.v1.ExecutorService", st)
			last = st
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
