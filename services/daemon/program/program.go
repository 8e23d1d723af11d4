// Package program starts a sandpit binary: it parses the configuration,
// builds the JSON slog logger at the configured level, turns SIGINT and
// SIGTERM into a cancelled context, runs the service and maps the outcome
// to an exit code (2 for bad configuration, 1 for a failed run); and it
// serves the binary's Prometheus metrics.
package program

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Main runs the named program. parse reads the arguments and environment
// and returns the configuration and its log level (debug, info, warn or
// error); run serves until ctx ends. Main does not return.
func Main[C any](name string, parse func(args []string, getenv func(string) string) (C, string, error), run func(ctx context.Context, cfg C, log *slog.Logger) error) {
	cfg, levelName, err := parse(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(levelName)); err != nil {
		fmt.Fprintf(os.Stderr, "%s: log-level: %v\n", name, err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err = run(ctx, cfg, log)
	stop()
	if err != nil {
		log.Error(name+" stopped", "error", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Version is the binary's version: its module version when built from a
// tagged module, else the VCS revision, else "devel".
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			return s.Value
		}
	}
	return "devel"
}

// RegisterBuildInfo registers sandpit_build_info{binary,version,go_version}
// = 1 on reg.
func RegisterBuildInfo(reg prometheus.Registerer, binary string) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "sandpit_build_info",
		Help:        "Always 1; the labels say which build of which binary runs.",
		ConstLabels: prometheus.Labels{"binary": binary, "version": Version(), "go_version": runtime.Version()},
	})
	g.Set(1)
	reg.MustRegister(g)
}

// Route is a further handler on the metrics listener.
type Route struct {
	Path    string
	Handler http.Handler
}

// ListenMetrics listens on addr for ServeMetricsOn; an empty addr gives a
// nil listener, which serves nothing.
func ListenMetrics(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen metrics: %w", err)
	}
	return lis, nil
}

// ServeMetricsOn serves g's metrics at /metrics on lis until ctx ends, and
// each of more at its path; a nil lis returns at once.
func ServeMetricsOn(ctx context.Context, lis net.Listener, g prometheus.Gatherer, more ...Route) error {
	if lis == nil {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	for _, r := range more {
		mux.Handle(r.Path, r.Handler)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	return nil
}

// Every calls f every interval until ctx ends; it returns when ctx ends.
// The executor's periodic work (the policy file's and the tenants file's
// watches, the reaper) runs on it.
func Every(ctx context.Context, interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
