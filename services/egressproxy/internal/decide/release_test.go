package decide_test

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
)

// releasingServer answers each question with an allow, sending the given
// notices before the answer, as the executor does when executions end
// while questions are in flight.
type releasingServer struct {
	egressv1.UnimplementedDecisionServiceServer
	notices []*egressv1.DecideResponse
}

func (s *releasingServer) Decide(stream grpc.BidiStreamingServer[egressv1.DecideRequest, egressv1.DecideResponse]) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		q := req.GetQuestion()
		if q == nil {
			continue
		}
		for _, n := range s.notices {
			if err := stream.Send(n); err != nil {
				return err
			}
		}
		if err := stream.Send(&egressv1.DecideResponse{Id: q.GetId(), Decision: policyv1.Decision_DECISION_ALLOW, RuleId: "r"}); err != nil {
			return err
		}
	}
}

func release(ip string) *egressv1.DecideResponse {
	return &egressv1.DecideResponse{Release: &egressv1.Release{SourceIp: ip}}
}

// TestReleaseNotice: a Release notice reaches OnRelease with its address,
// one with a bad address is dropped, and neither is taken for an answer.
func TestReleaseNotice(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(decide.MaxMessageBytes))
	egressv1.RegisterDecisionServiceServer(srv, &releasingServer{notices: []*egressv1.DecideResponse{
		release("10.88.0.7"), release("not an address"), release("::ffff:10.88.0.8"),
	}})
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	c := newClient(t, ln.Addr().String(), 2*time.Second)
	var mu sync.Mutex
	var got []netip.Addr
	c.OnRelease(func(a netip.Addr) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, a)
	})
	waitUp(t, c, true)
	v, err := ask(c, "GET", "api.stripe.test")
	if err != nil || v.Decision != policyv1.Decision_DECISION_ALLOW || v.RuleID != "r" {
		t.Fatalf("answer after notices = %+v, %v; want the allow", v, err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []netip.Addr{netip.MustParseAddr("10.88.0.7"), netip.MustParseAddr("10.88.0.8")}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("released %v, want %v", got, want)
	}
	if !c.Connected() {
		t.Fatal("a notice broke the stream")
	}
}
