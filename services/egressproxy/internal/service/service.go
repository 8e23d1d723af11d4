// Package service serves sandpit.egress.v1.EgressService with health,
// reflection and the interceptor chain.
package service

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	"github.com/sandpit-run/sandpit/services/lib/grpcserve"
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

// NewGRPCServer serves svc with sandpit's interceptor chain, health and
// reflection.
func NewGRPCServer(svc egressv1.EgressServiceServer, hs *health.Server, reg prometheus.Registerer, log *slog.Logger) *grpc.Server {
	return grpcserve.New(grpcserve.Options{Registerer: reg, Log: log, Health: hs},
		func(r grpc.ServiceRegistrar) { egressv1.RegisterEgressServiceServer(r, svc) })
}
