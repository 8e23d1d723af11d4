package server

import (
	"context"
	"log/slog"
	"runtime/debug"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// NewGRPCServer wires the service with health, reflection and one
// interceptor chain: metrics outermost, then logging, recovery innermost so
// that a panic is logged and counted like any other failed call.
// Further services (the decision service) are registered by register.
func NewGRPCServer(svc *Service, hs *health.Server, reg prometheus.Registerer, maxRecvBytes int, log *slog.Logger, register ...func(grpc.ServiceRegistrar)) *grpc.Server {
	srvMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	panics := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sandpit_grpc_panics_recovered_total",
		Help: "Panics in gRPC handlers turned into Internal errors.",
	})
	reg.MustRegister(srvMetrics, panics)

	logger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		log.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	logOpts := []logging.Option{logging.WithLogOnEvents(logging.StartCall, logging.FinishCall)}
	recoverOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		panics.Inc()
		log.ErrorContext(ctx, "recovered from panic", "panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})}

	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(maxRecvBytes),
		grpc.ChainUnaryInterceptor(
			srvMetrics.UnaryServerInterceptor(),
			logging.UnaryServerInterceptor(logger, logOpts...),
			recovery.UnaryServerInterceptor(recoverOpts...),
		),
		grpc.ChainStreamInterceptor(
			srvMetrics.StreamServerInterceptor(),
			logging.StreamServerInterceptor(logger, logOpts...),
			recovery.StreamServerInterceptor(recoverOpts...),
		),
	)
	executorv1.RegisterExecutorServiceServer(srv, svc)
	for _, r := range register {
		r(srv)
	}
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	srvMetrics.InitializeMetrics(srv)
	return srv
}
