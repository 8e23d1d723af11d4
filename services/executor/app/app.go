// Package app builds the executor from its configuration and runs it; the
// binary's main and the integration tests (module test/) use the same
// wiring.
package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/grpcserve"
	"github.com/sandpit-run/sandpit/services/daemon/program"
	"github.com/sandpit-run/sandpit/services/executor/internal/capacity"
	"github.com/sandpit-run/sandpit/services/executor/internal/config"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/decisionlisten"
	"github.com/sandpit-run/sandpit/services/executor/internal/egress"
	"github.com/sandpit-run/sandpit/services/executor/internal/identity"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/executor/internal/secrets"
	"github.com/sandpit-run/sandpit/services/executor/internal/server"
	"github.com/sandpit-run/sandpit/services/executor/internal/tenants"
	"github.com/sandpit-run/sandpit/services/executor/internal/warmpool"
	"github.com/sandpit-run/sandpit/services/policy"
)

// healthInterval is how often containerd is probed; a lost containerd is
// noticed, and what lost executions left is reaped, within about this.
const healthInterval = 2 * time.Second

// reapTimeout bounds one pass of the reaper.
const reapTimeout = time.Minute

// killGrace bounds the wait for killed executions to report once the
// shutdown grace is over.
const killGrace = 30 * time.Second

// Config is the executor's configuration.
type Config = config.Config

// ParseConfig reads the executor's flags from args (without the program
// name), each with its SANDPIT_* environment variable from getenv as
// fallback.
func ParseConfig(args []string, getenv func(string) string) (Config, error) {
	return config.Parse(args, getenv)
}

// Option changes how New builds the executor.
type Option func(*App)

// WithListener serves Execute on lis instead of listening on cfg.Listen.
func WithListener(lis net.Listener) Option {
	return func(a *App) { a.lis = lis }
}

// App is a built executor: connected to containerd, swept, listening.
type App struct {
	cfg   config.Config
	log   *slog.Logger
	rt    *sandbox.Runtime
	eg    *egress.Egress
	slots *capacity.Limiter
	// tenants is the tenants store, nil without one; tenantsFile is it
	// when it is a file (polled by Run), tenantsDB when a database.
	tenants     tenants.Source
	tenantsFile *tenants.Store
	tenantsDB   *tenants.PGStore
	secrets     *secrets.Store
	reg         *prometheus.Registry
	hs          *health.Server

	srv, decider *grpc.Server
	lis, metrics net.Listener
	dlis         *decisionlisten.Listener
	// pool is the warm pool, nil without one.
	pool *warmpool.Pool

	// shutdown ends every running sandbox when cancelled.
	shutdown context.Context
	killAll  context.CancelFunc
}

// New connects to containerd, removes what a previous executor left, sets
// up egress and binds every listener, so that Addr is known before Run.
// On error everything New made is released.
func New(ctx context.Context, cfg Config, log *slog.Logger, opts ...Option) (_ *App, err error) {
	a := &App{cfg: cfg, log: log, reg: prometheus.NewRegistry(), hs: health.NewServer()}
	for _, o := range opts {
		o(a)
	}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	program.RegisterBuildInfo(a.reg, "sandpit-executor")

	var nofile unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile); err == nil && limits.ClampOpenFiles(&cfg.Defaults, &cfg.Maxima, nofile.Max) {
		log.Warn("open-files maximum lowered to the host's hard limit", "max_open_files", cfg.Maxima.OpenFiles, "default_open_files", cfg.Defaults.OpenFiles)
	}
	a.cfg = cfg

	var hostIDs *sandbox.HostIDs
	if cfg.UserNS {
		if hostIDs, err = sandbox.NewHostIDs(cfg.UserNSBase, int(cfg.UserNSCount)); err != nil {
			return nil, err
		}
	}
	a.rt, err = sandbox.New(ctx, sandbox.Config{
		Address:       cfg.ContainerdAddress,
		Namespace:     cfg.ContainerdNamespace,
		Snapshotter:   cfg.Snapshotter,
		RuncPath:      cfg.RuncPath,
		RunscPath:     cfg.RunscPath,
		RunscPlatform: cfg.RunscPlatform,
		StateDir:      cfg.StateDir,
		UID:           uint32(cfg.SandboxUID),
		GID:           uint32(cfg.SandboxGID),
		InitPath:      cfg.InitPath,
		HostIDs:       hostIDs,
		PullTimeout:   cfg.ImagePullTimeout,
	}, sandbox.NewMetrics(a.reg), log)
	if err != nil {
		return nil, err
	}
	swept, err := a.rt.Sweep(ctx)
	log.Info("removed leftovers of a previous executor", "containers", swept.Containers, "tasks", swept.Tasks,
		"snapshots", swept.Snapshots, "code_dirs", swept.CodeDirs)
	if err != nil {
		return nil, fmt.Errorf("sweep leftovers: %w", err)
	}
	if err := a.checkRuntimes(); err != nil {
		return nil, err
	}
	defaultImage, err := a.rt.ResolveImage(ctx, cfg.Image)
	if err != nil {
		return nil, fmt.Errorf("default image: %w (make image imports it)", err)
	}

	if err := a.openTenants(ctx); err != nil {
		return nil, err
	}
	if err := a.openSecrets(); err != nil {
		return nil, err
	}
	var eg server.Egress
	if cfg.Egress {
		if eg, err = a.newEgress(ctx); err != nil {
			return nil, err
		}
	}

	a.slots = capacity.New(cfg.MaxConcurrent, cfg.MaxQueue)
	a.shutdown, a.killAll = context.WithCancel(context.WithoutCancel(ctx))
	var svc *server.Service
	var pool server.Pool
	if cfg.WarmPool > 0 {
		a.pool = warmpool.New(warmpool.Config{Size: cfg.WarmPool, MaxAge: cfg.WarmPoolMaxAge, Boot: func(ctx context.Context) (warmpool.Sandbox, error) {
			return svc.BootWarm(ctx)
		}}, a.reg, log)
		pool = a.pool
	}
	svc = server.New(a.shutdown, server.Config{
		Defaults:          cfg.Defaults,
		Maxima:            cfg.Maxima,
		DefaultImage:      cfg.Image,
		ImageAllowlist:    cfg.ImageAllowlist,
		NodePath:          cfg.NodePath,
		Runtimes:          cfg.Runtimes,
		Egress:            eg,
		Tenancy:           &server.Tenancy{Source: a.tenants, CertTenants: cfg.TLS.ClientCAFile != ""},
		Secrets:           a.secrets,
		CheckImages:       cfg.CheckImages,
		ImageAllowClasses: cfg.ImageAllowClasses,
		Pool:              pool,
	}, a.rt, a.slots, server.NewMetrics(a.reg, a.slots), log)
	if err := svc.CheckImage(ctx, defaultImage); err != nil {
		return nil, fmt.Errorf("default image %s: %s", cfg.Image, status.Convert(err).Message())
	}
	var callerOpts []grpc.ServerOption
	if cfg.TLS.Enabled() {
		creds, err := grpcserve.ServerCredentials(cfg.TLS, log)
		if err != nil {
			return nil, err
		}
		callerOpts = append(callerOpts, grpc.Creds(creds))
	}
	var tokens *identity.Verifier
	if cfg.JWT.Enabled() {
		v, err := identity.New(cfg.JWT, log)
		if err != nil {
			return nil, err
		}
		tokens = v
		callerOpts = append(callerOpts, server.AuthOptions(v)...)
		log.Info("callers authenticate with JWT bearer tokens", "issuer", cfg.JWT.Issuer, "audience", cfg.JWT.Audience,
			"tenant_claim", cfg.JWT.TenantClaim, "tier_claim", cfg.JWT.TierClaim)
	}
	a.srv = grpcserve.New(grpcserve.Options{
		Registerer:    prometheus.WrapRegistererWith(prometheus.Labels{"server": "executor"}, a.reg),
		Log:           log,
		Health:        a.hs,
		MaxRecvBytes:  int(cfg.Maxima.CodeBytes) + 1<<20,
		LogStart:      true,
		ErrorDomain:   server.ErrorDomain,
		ServerOptions: callerOpts,
	}, func(r grpc.ServiceRegistrar) {
		executorv1.RegisterExecutorServiceServer(r, svc)
		policyv1.RegisterPolicyServiceServer(r, server.NewPolicyService(svc, tokens))
	})

	if a.lis == nil {
		if a.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
	}
	if a.metrics, err = program.ListenMetrics(cfg.MetricsListen); err != nil {
		return nil, err
	}
	return a, nil
}

// openTenants opens the tenants store the configuration names, if any.
func (a *App) openTenants(ctx context.Context) error {
	switch cfg := a.cfg; {
	case cfg.TenantsFile != "":
		st, err := tenants.Open(cfg.TenantsFile, a.reg, a.log)
		if err != nil {
			return err
		}
		a.tenantsFile, a.tenants = st, st
		a.log.Info("serving tenants", "tenants_file", cfg.TenantsFile, "tenants", st.Current().Len())
	case cfg.PolicyStore != "":
		st, err := tenants.OpenPostgres(ctx, cfg.PolicyStore, a.reg, a.log)
		if err != nil {
			return err
		}
		a.tenantsDB, a.tenants = st, st
		a.log.Info("serving tenants", "policy_store", "postgres", "tenants", st.Current().Len())
	}
	return nil
}

// openSecrets opens the secret store of --secrets-dir and the
// SANDPIT_SECRET_* variables, which it then unsets so that nothing the
// executor starts inherits them, with the tenants database of
// --policy-store as a source of tenants' secrets (a file wins over a row).
// Without any there is no store.
func (a *App) openSecrets() error {
	environ := os.Environ()
	use := a.cfg.SecretsDir != "" || a.tenantsDB != nil
	for _, kv := range environ {
		use = use || strings.HasPrefix(kv, secrets.EnvPrefix)
	}
	if !use {
		return nil
	}
	st, err := secrets.Open(a.cfg.SecretsDir, environ, a.log)
	if err != nil {
		return err
	}
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, secrets.EnvPrefix) {
			_ = os.Unsetenv(k)
		}
	}
	if a.tenantsDB != nil {
		st.AddSource(a.tenantsDB.Secret)
	}
	a.secrets = st
	a.log.Info("serving secrets", "secrets_dir", a.cfg.SecretsDir, "secrets", st.Len(), "policy_store", a.tenantsDB != nil)
	return nil
}

// checkRuntimes refuses to start without the default OCI runtime; a runtime
// only some images are bound to may be absent, and requests for those
// images are refused (RUNTIME_UNAVAILABLE) until it is installed and the
// executor restarted.
func (a *App) checkRuntimes() error {
	for _, rt := range a.cfg.Runtimes.Used() {
		err := a.rt.Installed(rt)
		switch {
		case err == nil:
			a.log.Info("OCI runtime ready", "runtime", rt, "default", rt == a.cfg.Runtimes.Default)
		case rt == a.cfg.Runtimes.Default:
			return fmt.Errorf("default OCI runtime: %w (install Debian's runsc, or set --runsc)", err)
		default:
			a.log.Warn("OCI runtime not installed; requests for the images bound to it are refused", "runtime", rt, "error", err)
		}
	}
	return nil
}

// newEgress sets up sandbox networks and the decision service the proxy
// asks, on a listener of its own: the Execute port can be exposed to
// callers while only the proxy reaches this one.
func (a *App) newEgress(ctx context.Context) (server.Egress, error) {
	cfg := a.cfg
	proxyUID, err := lookupUID(cfg.ProxyUser)
	if err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	a.eg, err = egress.New(ctx, egress.Config{
		Pool:               cfg.AddressPool,
		ProxyPort:          uint16(cfg.ProxyPort),
		DNSPort:            uint16(cfg.DNSPort),
		ProxyUID:           proxyUID,
		Table:              cfg.NftTable,
		PolicyFile:         cfg.PolicyFile,
		TenantsDecide:      cfg.Tenants(),
		IfPrefix:           cfg.VethPrefix,
		NamePrefix:         cfg.NetnsPrefix,
		MaxNetworkLogBytes: int64(cfg.MaxNetworkLogBytes),
		DNSPacketRate:      uint32(cfg.DNSPacketRate),
	}, a.reg, a.log)
	if err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	// Only the proxy may open the Decide stream: anyone else could forge
	// network-log entries and spend an execution's request budget.
	if a.dlis, err = decisionlisten.Listen(cfg.DecisionListener(proxyUID), a.reg, a.log); err != nil {
		return nil, err
	}
	svc := decision.NewService(a.eg.Registry(), a.reg, a.log)
	a.decider = grpcserve.New(grpcserve.Options{
		Registerer:   prometheus.WrapRegistererWith(prometheus.Labels{"server": "decision"}, a.reg),
		Log:          a.log,
		Health:       health.NewServer(),
		MaxRecvBytes: decision.MaxMessageBytes,
		// The proxy pings every 10s to find a cut decision path (its
		// decide.KeepaliveTime); the default policy (5 min) would close
		// its connection for pinging too often.
		ServerOptions: append([]grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime: decision.KeepaliveMinTime, PermitWithoutStream: true,
		})}, a.dlis.ServerOptions...),
	}, func(r grpc.ServiceRegistrar) { egressv1.RegisterDecisionServiceServer(r, svc) })
	return Networks(a.eg), nil
}

// Addr is the Execute listener's address.
func (a *App) Addr() string { return a.lis.Addr().String() }

// MetricsAddr is the metrics listener's address (/metrics, /healthz), empty
// without one.
func (a *App) MetricsAddr() string {
	if a.metrics == nil {
		return ""
	}
	return a.metrics.Addr().String()
}

// DecisionAddr is the gRPC target of the decision service (unix:///path
// or host:port), empty without egress.
func (a *App) DecisionAddr() string {
	if a.dlis == nil {
		return ""
	}
	return a.dlis.Target()
}

// ProxyConnected reports whether an egress proxy holds a decision stream.
func (a *App) ProxyConnected() bool { return a.eg != nil && a.eg.Registry().Connected() }

// NetworkLogBytes is what the running executions' network logs hold of
// their global bound (--max-network-log-bytes); 0 without egress.
func (a *App) NetworkLogBytes() int64 {
	if a.eg == nil {
		return 0
	}
	return a.eg.NetworkLogBytes()
}

// StopDecisions stops serving decisions at once, as if the decision path
// broke: the proxy then denies everything. For tests of that path.
func (a *App) StopDecisions() {
	if a.decider != nil {
		a.decider.Stop()
	}
}

// Slots is the capacity limiter, for tests that watch it.
func (a *App) Slots() *capacity.Limiter { return a.slots }

// Egress is the egress path, nil without one; for tests and benchmarks
// that attach a network of their own.
func (a *App) Egress() *egress.Egress { return a.eg }

// Run serves until ctx ends, then stops taking calls, lets running
// executions finish for the shutdown grace, kills the rest and releases
// everything. Every goroutine it starts has ended when it returns.
func (a *App) Run(ctx context.Context) error {
	defer a.close()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := a.srv.Serve(a.lis); err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	})
	if a.decider != nil {
		g.Go(func() error {
			if err := a.decider.Serve(a.dlis); err != nil {
				return fmt.Errorf("serve decisions: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		return program.ServeMetricsOn(gctx, a.metrics, a.reg, program.Route{Path: "/healthz", Handler: http.HandlerFunc(a.healthz)})
	})
	g.Go(func() error {
		grpcserve.WatchHealth(gctx, a.hs, healthInterval, a.probe, a.log, executorv1.ExecutorService_ServiceDesc.ServiceName)
		return nil
	})
	g.Go(func() error {
		a.reap(gctx)
		return nil
	})
	g.Go(func() error {
		a.rt.WatchImages(gctx)
		return nil
	})
	if a.pool != nil {
		g.Go(func() error {
			a.pool.Run(gctx)
			return nil
		})
	}
	if a.tenantsFile != nil {
		g.Go(func() error {
			a.tenantsFile.Run(gctx, a.cfg.TenantsReload)
			return nil
		})
	}
	if a.secrets != nil && a.cfg.SecretsDir != "" {
		g.Go(func() error {
			program.Every(gctx, a.cfg.SecretsReload, a.secrets.Check)
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		a.stop()
		return nil
	})
	a.log.Info("serving", "listen", a.Addr(), "tls", a.cfg.TLS.Enabled(), "mtls", a.cfg.TLS.ClientCAFile != "", "decision_listen", a.DecisionAddr(), "metrics_listen", a.cfg.MetricsListen, "image", a.cfg.Image)
	err := g.Wait()
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// healthz reports, as JSON on the metrics listener, what the gRPC health
// status cannot say: each part's state and, when it is not ok, why. It
// answers 503 when the executor cannot run code (containerd), 200 else,
// even when a part is degraded (a tenants edit that did not load leaves the
// last good version serving).
func (a *App) healthz(w http.ResponseWriter, r *http.Request) {
	checks := map[string]string{"containerd": "ok"}
	code := http.StatusOK
	if err := a.probe(r.Context()); err != nil {
		checks["containerd"], code = err.Error(), http.StatusServiceUnavailable
	}
	if a.tenants != nil {
		checks["tenants"] = "ok"
		if p := a.tenants.Problem(); p != "" {
			checks["tenants"] = "the last good version is in force: " + p
		}
	}
	if a.secrets != nil {
		checks["secrets"] = "ok"
		if p := a.secrets.Problem(); p != "" {
			checks["secrets"] = "the last good version is in force: " + p
		}
	}
	if a.eg != nil {
		checks["egress_proxy"] = "ok"
		if !a.eg.Registry().Connected() {
			checks["egress_proxy"] = "no egress proxy holds a decision stream: every sandbox request is denied"
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"serving": code == http.StatusOK, "checks": checks})
}

// probe is the health check: containerd answers.
func (a *App) probe(ctx context.Context) error {
	if err := a.rt.Healthy(ctx); err != nil {
		return fmt.Errorf("containerd: %w", err)
	}
	return nil
}

// reap removes, while containerd answers, what executions left when their
// cleanup failed (containerd lost mid-execution), without a restart.
func (a *App) reap(ctx context.Context) {
	program.Every(ctx, healthInterval, func() {
		if a.probe(ctx) != nil {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, reapTimeout)
		swept, err := a.rt.Reap(rctx)
		cancel()
		if swept != (sandbox.Swept{}) {
			a.log.Info("reaped what lost executions left", "containers", swept.Containers, "tasks", swept.Tasks,
				"snapshots", swept.Snapshots, "code_dirs", swept.CodeDirs)
		}
		if err != nil {
			a.log.Warn("reap lost executions", "error", err)
		}
	})
}

// stop ends serving: no new calls, the grace for running executions, then
// the kill. The decision service stops last: the proxy needs decisions
// while executions finish.
func (a *App) stop() {
	a.log.Info("shutting down", "grace_seconds", a.cfg.ShutdownGrace.Seconds())
	a.hs.Shutdown()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		a.srv.GracefulStop()
	}()
	select {
	case <-stopped:
	case <-time.After(a.cfg.ShutdownGrace):
		a.log.Warn("grace over, killing running executions", "running", a.slots.InFlight())
		a.killAll()
		select {
		case <-stopped:
		case <-time.After(killGrace):
			a.srv.Stop()
			<-stopped
		}
	}
	if a.decider != nil {
		a.decider.Stop()
	}
}

// close releases what New made; safe on a partly built App.
func (a *App) close() {
	if a.killAll != nil {
		a.killAll()
	}
	for _, l := range []net.Listener{a.lis, a.metrics} {
		if l != nil {
			_ = l.Close()
		}
	}
	if a.dlis != nil {
		_ = a.dlis.Close()
	}
	if a.rt != nil {
		// Sandboxes still being removed release their networks, before
		// the tables go.
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := a.rt.Drain(dctx); err != nil {
			a.log.Warn("sandboxes still being removed at shutdown; the next start sweeps them", "error", err)
		}
		cancel()
	}
	if a.eg != nil {
		if err := a.eg.Close(); err != nil {
			a.log.Error("close egress", "error", err)
		}
	}
	if a.tenantsDB != nil {
		a.tenantsDB.Close()
	}
	if a.rt != nil {
		_ = a.rt.Close()
	}
}

// Networks is eg as the server sees it: a source of Network attachments.
func Networks(eg *egress.Egress) server.Egress { return networks{eg} }

type networks struct{ eg *egress.Egress }

func (n networks) Attach(ctx context.Context, id string, inline *policy.Compiled, events chan<- *executorv1.NetworkEvent) (server.Network, error) {
	att, err := n.eg.Attach(ctx, id, inline, events)
	if err != nil {
		return nil, err
	}
	return attachment{att}, nil
}

func (n networks) Policy(narrow *policy.Compiled) *policy.Compiled { return n.eg.Policy(narrow) }

func (n networks) Prepare() (server.Reservation, error) {
	att, err := n.eg.Prepare()
	if err != nil {
		return nil, err
	}
	return reservation{att}, nil
}

// reservation is a warm sandbox's network as the server uses it.
type reservation struct{ *egress.Attachment }

func (r reservation) Contribute(s *sandbox.Spec) { attachment(r).Contribute(s) }
func (r reservation) Bind(id string, narrow *policy.Compiled, events chan<- *executorv1.NetworkEvent) server.Network {
	r.Attachment.Bind(id, narrow, events)
	return attachment(r)
}

// attachment is one sandbox's network as the server uses it.
type attachment struct{ *egress.Attachment }

func (a attachment) Contribute(s *sandbox.Spec) {
	s.Network = a.Connect
	s.ExtraFiles = append(s.ExtraFiles, a.ExtraFiles...)
	s.Env = append(s.Env, a.Env...)
	s.NodeFlags = append(s.NodeFlags, a.NodeFlags...)
}

func (a attachment) Close() error                      { a.End(); return nil }
func (a attachment) Summary() decision.Summary         { return a.Network.Summary() }
func (a attachment) Problem() string                   { return a.NetworkError }
func (a attachment) Observe(f func(decision.Observed)) { a.Network.Observe(f) }
func (a attachment) UseSecrets(s []decision.Secret)    { a.Network.UseSecrets(s) }
