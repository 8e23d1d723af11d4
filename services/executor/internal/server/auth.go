package server

import (
	"context"
	"errors"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/identity"
)

// AuthOptions make every ExecutorService call carry a bearer token v
// accepts; health and reflection stay open. They go into the server's
// ServerOptions, so the check runs inside metrics, logging and recovery
// and refused calls are counted and logged like any other.
func AuthOptions(v *identity.Verifier) []grpc.ServerOption {
	check := authenticate(v)
	executorOnly := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.Service == executorv1.ExecutorService_ServiceDesc.ServiceName
	})
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(check), executorOnly)),
		grpc.ChainStreamInterceptor(selector.StreamServerInterceptor(auth.StreamServerInterceptor(check), executorOnly)),
	}
}

// authenticate verifies the call's token and puts the caller's identity in
// its context; a refused token is Unauthenticated with the reason.
func authenticate(v *identity.Verifier) auth.AuthFunc {
	return func(ctx context.Context) (context.Context, error) {
		// A missing header, or one of another scheme, is a missing token.
		token, _ := auth.AuthFromMD(ctx, "bearer")
		id, err := v.Verify(token)
		if err != nil {
			reason := identity.ReasonMalformed
			var ie *identity.Error
			if errors.As(err, &ie) {
				reason = ie.Reason
			}
			return nil, statusError(codes.Unauthenticated, reason, err.Error(), nil)
		}
		return identity.NewContext(ctx, id), nil
	}
}
