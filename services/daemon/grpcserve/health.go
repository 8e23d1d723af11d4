package grpcserve

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// WatchHealth keeps hs in step with probe until ctx ends: SERVING while
// probe returns nil, NOT_SERVING while it fails, for the server as a whole
// ("") and for each named service. It probes every interval, each probe
// bounded by the interval, and logs every change.
func WatchHealth(ctx context.Context, hs *health.Server, interval time.Duration, probe func(context.Context) error, log *slog.Logger, services ...string) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := healthpb.HealthCheckResponse_UNKNOWN
	for {
		pctx, cancel := context.WithTimeout(ctx, interval)
		err := probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		st := healthpb.HealthCheckResponse_SERVING
		if err != nil {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		if st != last {
			log.Info("health", "status", st.String(), "error", err)
			for _, svc := range append([]string{""}, services...) {
				hs.SetServingStatus(svc, st)
			}
			last = st
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
