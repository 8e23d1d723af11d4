// Package grpcserve builds the gRPC servers of sandpit's services: one
// interceptor chain (Prometheus metrics outermost, then slog logging,
// recovery innermost so that a panic is logged and counted like any failed
// call), grpc.health.v1 and server reflection always on.
package grpcserve

import (
	"context"
	"log/slog"
	"runtime/debug"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// Options configure a server.
type Options struct {
	// Registerer receives the gRPC metrics and the panic counter.
	Registerer prometheus.Registerer
	// Log receives call logs and recovered panics.
	Log *slog.Logger
	// Health is served as grpc.health.v1.
	Health *health.Server
	// MaxRecvBytes bounds a received message; 0 keeps gRPC's 4 MiB.
	MaxRecvBytes int
	// LogStart logs the start of every call too, not only its end: useful
	// for long streams.
	LogStart bool
	// ErrorDomain is the google.rpc.ErrorInfo domain of the Internal
	// status a recovered panic becomes.
	ErrorDomain string
	// ServerOptions are added to the server's own (keepalive, ...).
	ServerOptions []grpc.ServerOption
}

// New returns a server with the services register adds, health and
// reflection.
func New(o Options, register func(grpc.ServiceRegistrar)) *grpc.Server {
	srvMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	panics := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sandpit_grpc_panics_recovered_total",
		Help: "Panics in gRPC handlers turned into Internal errors.",
	})
	o.Registerer.MustRegister(srvMetrics, panics)

	logger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		o.Log.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	events := []logging.LoggableEvent{logging.FinishCall}
	if o.LogStart {
		events = append(events, logging.StartCall)
	}
	logOpts := []logging.Option{
		logging.WithLogOnEvents(events...),
		// Durations are float seconds in every log of ours, not the
		// middleware's default string of milliseconds.
		logging.WithDurationField(func(d time.Duration) logging.Fields {
			return logging.Fields{"grpc.duration_seconds", d.Seconds()}
		}),
		logging.WithFieldsFromContext(clientFields),
	}
	recoverOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		panics.Inc()
		o.Log.ErrorContext(ctx, "recovered from panic", "panic", p, "stack", string(debug.Stack()))
		st, err := status.New(codes.Internal, "internal error").WithDetails(&errdetails.ErrorInfo{Reason: "INTERNAL", Domain: o.ErrorDomain})
		if err != nil {
			return status.Error(codes.Internal, "internal error")
		}
		return st.Err()
	})}

	opts := []grpc.ServerOption{
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
	}
	if o.MaxRecvBytes > 0 {
		opts = append(opts, grpc.MaxRecvMsgSize(o.MaxRecvBytes))
	}
	srv := grpc.NewServer(append(opts, o.ServerOptions...)...)
	register(srv)
	healthpb.RegisterHealthServer(srv, o.Health)
	reflection.Register(srv)
	srvMetrics.InitializeMetrics(srv)
	return srv
}
