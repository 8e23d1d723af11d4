package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/grpcserve"
	"github.com/sandpit-run/sandpit/services/executor/internal/identity"
	"github.com/sandpit-run/sandpit/services/policy"
)

const authSecret = "an HS256 secret of at least 32 bytes"

func hsToken(t *testing.T, c jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(authSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAuthOverGRPC runs the executor's interceptor chain on a loopback
// listener: Execute needs a token, health does not, Started echoes the
// caller's tenant and tier.
func TestAuthOverGRPC(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte(authSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := identity.New(identity.Config{HS256SecretFile: secret, Skew: identity.DefaultSkew}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	svc := newService(t, &fakeSandboxes{run: helloRun}, nil)
	srv := grpcserve.New(grpcserve.Options{Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Health: health.NewServer(), ErrorDomain: ErrorDomain, ServerOptions: AuthOptions(v)},
		func(r grpc.ServiceRegistrar) { executorv1.RegisterExecutorServiceServer(r, svc) })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health without a token: %v", err)
	}
	client := executorv1.NewExecutorServiceClient(conn)
	first := func(md ...string) (*executorv1.ExecuteResponse, error) {
		st, err := client.Execute(metadata.AppendToOutgoingContext(ctx, md...), &executorv1.ExecuteRequest{Code: "x"})
		if err != nil {
			return nil, err
		}
		return st.Recv()
	}
	valid := jwt.MapClaims{"sub": "tenant-a", "tier": "pro", "exp": time.Now().Add(time.Hour).Unix()}
	tests := []struct {
		name   string
		md     []string
		reason string
	}{
		{name: "no token", reason: identity.ReasonMissing},
		{name: "another scheme", md: []string{"authorization", "Basic dXNlcjpwYXNz"}, reason: identity.ReasonMissing},
		{name: "expired", md: []string{"authorization", "Bearer " + hsToken(t, jwt.MapClaims{"sub": "a", "exp": time.Now().Add(-time.Hour).Unix()})}, reason: identity.ReasonExpired},
		{name: "no tenant", md: []string{"authorization", "Bearer " + hsToken(t, jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()})}, reason: identity.ReasonNoTenant},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := first(tt.md...)
			if status.Code(err) != codes.Unauthenticated || reasonOf(err) != tt.reason {
				t.Errorf("Execute: %v (reason %s), want Unauthenticated %s", err, reasonOf(err), tt.reason)
			}
		})
	}
	ev, err := first("authorization", "Bearer "+hsToken(t, valid))
	if err != nil {
		t.Fatal(err)
	}
	if s := ev.GetStarted(); s.GetTenant() != "tenant-a" || s.GetTier() != "pro" {
		t.Errorf("Started %v: want tenant tenant-a, tier pro", s)
	}
}

// recordingEgress keeps the policy an execution was attached with, then
// refuses, so that nothing runs.
type recordingEgress struct{ narrow **policy.Compiled }

func (r recordingEgress) Attach(_ context.Context, _ string, narrow *policy.Compiled, _ chan<- *executorv1.NetworkEvent) (Network, error) {
	*r.narrow = narrow
	return nil, errors.New("recorded")
}

// TestTokenNarrowsExecution: the token's claims and the inline policy both
// narrow what the execution's network is attached with.
func TestTokenNarrowsExecution(t *testing.T) {
	claims, err := policy.Claims([]string{"api.stripe.com"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var narrow *policy.Compiled
	s := newService(t, &fakeSandboxes{run: helloRun}, nil)
	s.cfg.Egress = recordingEgress{&narrow}
	ctx := identity.NewContext(context.Background(), identity.Identity{Tenant: "t", Policy: claims})
	inline := &executorv1.ExecuteRequest{Code: "1", Policy: mustPolicy(t, `version: 1
default: allow
hosts:
  - host: api.stripe.com
    rules: [{ id: no-charges, path: /v1/charges, action: deny }]
    default: allow
`)}
	_ = s.Execute(inline, &fakeStream{ctx: ctx})
	if narrow == nil {
		t.Fatal("the execution was attached without a policy")
	}
	// The operator allows everything; the narrowers decide.
	allowAll := mustCompile(t, "version: 1\ndefault: allow\n")
	tests := []struct {
		host, path, rule string
		forward          bool
	}{
		{"api.stripe.com", "/v1/products", "hosts[0].default", true},
		{"api.stripe.com", "/v1/charges", "no-charges", false},
		{"api.github.com", "/", policy.RuleTokenDomains, false},
	}
	for _, tt := range tests {
		d := policy.Chain(allowAll, narrow).Decide(policy.Request{Method: "GET", Host: tt.host, Path: tt.path})
		if d.RuleID != tt.rule || d.Forward() != tt.forward {
			t.Errorf("GET %s%s: %v %q, want forward %v by %q", tt.host, tt.path, d.Decision, d.RuleID, tt.forward, tt.rule)
		}
	}
}

func mustPolicy(t *testing.T, yaml string) *policyv1.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustCompile(t *testing.T, yaml string) *policy.Compiled {
	t.Helper()
	c, err := policy.Compile(mustPolicy(t, yaml))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
