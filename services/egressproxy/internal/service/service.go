// Package service serves sandpit.egress.v1.EgressService with health,
// reflection and the interceptor chain.
package service

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

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
)

// Egress implements EgressService.
type Egress struct {
	egressv1.UnimplementedEgressServiceServer
	certPEM []byte
	sha256  string
}

// New returns the service for a CA certificate and its fingerprint.
func New(certPEM []byte, sha256Hex string) *Egress {
	return &Egress{certPEM: certPEM, sha256: sha256Hex}
}

// GetCACertificate returns the CA certificate; the key never leaves.
func (e *Egress) GetCACertificate(context.Context, *egressv1.GetCACertificateRequest) (*egressv1.GetCACertificateResponse, error) {
	return &egressv1.GetCACertificateResponse{CertificatePem: e.certPEM, Sha256: e.sha256}, nil
}

// NewGRPCServer wires the service with health, reflection and one
// interceptor chain: metrics outermost, then logging, recovery innermost.
func NewGRPCServer(svc egressv1.EgressServiceServer, hs *health.Server, reg prometheus.Registerer, log *slog.Logger) *grpc.Server {
	srvMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	reg.MustRegister(srvMetrics)
	logger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		log.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	logOpts := []logging.Option{logging.WithLogOnEvents(logging.FinishCall)}
	recoverOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "recovered from panic", "panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})}
	srv := grpc.NewServer(
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
	egressv1.RegisterEgressServiceServer(srv, svc)
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	srvMetrics.InitializeMetrics(srv)
	return srv
}
