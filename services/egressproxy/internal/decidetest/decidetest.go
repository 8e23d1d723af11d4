// Package decidetest is an in-process stand-in for the executor's
// sandpit.egress.v1.DecisionService, on loopback, for the proxy's tests. It
// keeps the service's contract: a stream must start with a hello, and
// messages are at most decide.MaxMessageBytes.
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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
)

// Policy answers a question; a nil response means stay silent.
type Policy func(*egressv1.Question) *egressv1.DecideResponse

// Server records every message it receives and answers questions by its
// Policy.
type Server struct {
	egressv1.UnimplementedDecisionServiceServer
	Addr   string
	policy Policy
	srv    *grpc.Server

	mu      sync.Mutex
	got     []*egressv1.DecideRequest
	streams int
	kill    chan struct{}
}

// Start serves on a loopback port until the test ends.
func Start(t testing.TB, policy Policy) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Addr:   ln.Addr().String(),
		policy: policy,
		srv:    grpc.NewServer(grpc.MaxRecvMsgSize(decide.MaxMessageBytes)),
		kill:   make(chan struct{}),
	}
	egressv1.RegisterDecisionServiceServer(s.srv, s)
	go func() { _ = s.srv.Serve(ln) }()
	t.Cleanup(s.srv.Stop)
	return s
}

// Stop ends every stream and stops serving.
func (s *Server) Stop() { s.srv.Stop() }

// KillStreams ends every open stream with an error and keeps serving, as
// an executor would that lost one stream.
func (s *Server) KillStreams() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.kill)
	s.kill = make(chan struct{})
}

// Streams returns how many streams said hello so far.
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

// Decide implements the service.
func (s *Server) Decide(stream grpc.BidiStreamingServer[egressv1.DecideRequest, egressv1.DecideResponse]) error {
	s.mu.Lock()
	kill := s.kill
	s.mu.Unlock()
	errc := make(chan error, 1)
	go func() { errc <- s.serve(stream) }()
	select {
	case err := <-errc:
		return err
	case <-kill:
		return status.Error(codes.Unavailable, "killed by the test")
	}
}

func (s *Server) serve(stream grpc.BidiStreamingServer[egressv1.DecideRequest, egressv1.DecideResponse]) error {
	for first := true; ; first = false {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.got = append(s.got, req)
		if first && req.GetHello() != nil {
			s.streams++
		}
		s.mu.Unlock()
		if first != (req.GetHello() != nil) {
			return status.Error(codes.InvalidArgument, "hello is the first message of a Decide stream and only the first")
		}
		q := req.GetQuestion()
		if q == nil {
			continue
		}
		if resp := s.policy(q); resp != nil {
			resp.Id = q.GetId()
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
}

// Received returns what arrived so far.
func (s *Server) Received() []*egressv1.DecideRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*egressv1.DecideRequest(nil), s.got...)
}

// WaitFor polls until match returns true for a received message.
func (s *Server) WaitFor(t testing.TB, what string, match func(*egressv1.DecideRequest) bool) *egressv1.DecideRequest {
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
func Allow(rule string) *egressv1.DecideResponse {
	return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_ALLOW, RuleId: rule, ExecutionId: "exec-1"}
}

// Deny returns a denying response.
func Deny(code policyv1.DenialCode, rule, reason string) *egressv1.DecideResponse {
	return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_DENY, RuleId: rule, Reason: reason, ExecutionId: "exec-1", DenialCode: code}
}

// StripeLike allows GET (and WebSocket upgrades) under /v1/products and
// /redirect on api.stripe.test and plain.test, and DNS and TLS server
// names under .test except blocked.test; it denies the rest, and stays
// silent about host silent.test. Like the executor, it denies what the
// proxy marked as a violation.
func StripeLike(q *egressv1.Question) *egressv1.DecideResponse {
	if d := q.GetDns(); d != nil {
		return testName(d.GetName(), "dns")
	}
	if s := q.GetTls(); s != nil {
		return testName(s.GetName(), "tls")
	}
	h := q.GetHttp()
	switch {
	case h.GetHost() == "silent.test":
		return nil
	case h.GetViolation() != "":
		return Deny(policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST, "proxy", h.GetViolation())
	case h.GetHost() != "api.stripe.test" && h.GetHost() != "plain.test":
		return Deny(policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED, "default", "host not in policy")
	case h.GetMethod() == "GET" && (strings.HasPrefix(h.GetPath(), "/v1/products") || h.GetPath() == "/redirect" || h.GetPath() == "/ws"):
		return Allow("hosts[0].rules[0]")
	}
	return Deny(policyv1.DenialCode_DENIAL_CODE_RULE_DENIED, "hosts[0].rules[1]", "charges are not allowed")
}

// testName allows names under .test except blocked.test.
func testName(name, rule string) *egressv1.DecideResponse {
	if strings.HasSuffix(name, ".test") && name != "blocked.test" {
		return Allow(rule)
	}
	return Deny(policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED, "default", "not in policy")
}
