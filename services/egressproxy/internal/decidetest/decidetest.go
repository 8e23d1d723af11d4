// Package decidetest is an in-process stand-in for the executor's
// PolicyDecisionService, on loopback, for the proxy's tests.
package decidetest

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// Policy decides a question; nil response means stay silent.
type Policy func(*policyv1.DecideRequest) *policyv1.DecideResponse

// Server records every message it receives and answers by its Policy.
type Server struct {
	policyv1.UnimplementedPolicyDecisionServiceServer
	Addr   string
	policy Policy
	srv    *grpc.Server

	mu  sync.Mutex
	got []*policyv1.DecideRequest
}

// Start serves on a loopback port until the test ends.
func Start(t testing.TB, policy Policy) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: ln.Addr().String(), policy: policy, srv: grpc.NewServer()}
	policyv1.RegisterPolicyDecisionServiceServer(s.srv, s)
	go func() { _ = s.srv.Serve(ln) }()
	t.Cleanup(s.srv.Stop)
	return s
}

// Stop ends every stream and stops serving.
func (s *Server) Stop() { s.srv.Stop() }

// Decide implements the service.
func (s *Server) Decide(stream grpc.BidiStreamingServer[policyv1.DecideRequest, policyv1.DecideResponse]) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.got = append(s.got, req)
		s.mu.Unlock()
		if req.GetHttp() == nil && req.GetDns() == nil {
			continue
		}
		if resp := s.policy(req); resp != nil {
			resp.Id = req.GetId()
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
}

// Received returns what arrived so far.
func (s *Server) Received() []*policyv1.DecideRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*policyv1.DecideRequest(nil), s.got...)
}

// WaitFor polls until match returns true for a received message.
func (s *Server) WaitFor(t testing.TB, what string, match func(*policyv1.DecideRequest) bool) *policyv1.DecideRequest {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, r := range s.Received() {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("decider never received %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Allow returns an allowing response.
func Allow(rule string) *policyv1.DecideResponse {
	return &policyv1.DecideResponse{Decision: policyv1.Decision_DECISION_ALLOW, RuleId: rule, ExecutionId: "exec-1"}
}

// Deny returns a denying response.
func Deny(rule, reason string) *policyv1.DecideResponse {
	return &policyv1.DecideResponse{Decision: policyv1.Decision_DECISION_DENY, RuleId: rule, Reason: reason, ExecutionId: "exec-1"}
}

// StripeLike allows GET (and WebSocket upgrades) under /v1/products and
// /redirect on api.stripe.test and plain.test, and DNS for names under
// .test except blocked.test; it denies the rest.
func StripeLike(req *policyv1.DecideRequest) *policyv1.DecideResponse {
	if q := req.GetDns(); q != nil {
		if strings.HasSuffix(q.GetName(), ".test") && q.GetName() != "blocked.test" {
			return Allow("dns")
		}
		return Deny("default", "not in policy")
	}
	h := req.GetHttp()
	if h.GetHost() != "api.stripe.test" && h.GetHost() != "plain.test" {
		return Deny("default", "host not in policy")
	}
	if h.GetMethod() == "GET" && (strings.HasPrefix(h.GetPath(), "/v1/products") || h.GetPath() == "/redirect" || h.GetPath() == "/ws") {
		return Allow("hosts[0].rules[0]")
	}
	return Deny("hosts[0].rules[1]", "charges are not allowed")
}
