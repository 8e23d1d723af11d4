package service

import (
	"context"
	"log/slog"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/mitm"
)

func TestGetCACertificateAndHealth(t *testing.T) {
	ca, err := mitm.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewGRPCServer(New(ca.PEM, ca.Fingerprint()), health.NewServer(), prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := egressv1.NewEgressServiceClient(conn).GetCACertificate(context.Background(), &egressv1.GetCACertificateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.GetCertificatePem()) != string(ca.PEM) || resp.GetSha256() != ca.Fingerprint() || len(resp.GetSha256()) != 64 {
		t.Fatalf("got %v", resp)
	}
	h, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health %v %v", h, err)
	}
}
