package server

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/daemon/grpcserve"
)

// NewGRPCServer serves svc with sandpit's interceptor chain, health and
// reflection. Execute streams for long, so call starts are logged too.
func NewGRPCServer(svc *Service, hs *health.Server, reg prometheus.Registerer, maxRecvBytes int, log *slog.Logger) *grpc.Server {
	return grpcserve.New(grpcserve.Options{Registerer: reg, Log: log, Health: hs, MaxRecvBytes: maxRecvBytes, LogStart: true},
		func(r grpc.ServiceRegistrar) { executorv1.RegisterExecutorServiceServer(r, svc) })
}
