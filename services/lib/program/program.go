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

// ServeMetrics serves g's metrics at http://addr/metrics until the returned
// stop is called; an empty addr serves nothing.
func ServeMetrics(addr string, g prometheus.Gatherer) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	return func() { _ = srv.Close() }, nil
}
