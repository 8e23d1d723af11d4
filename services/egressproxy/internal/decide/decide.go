// Package decide is the proxy's side of the executor's Decide stream: it
// asks for verdicts, matches answers by id, reports outcomes, and denies
// whenever the executor cannot answer in time.
package decide

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// ErrUnavailable is wrapped by Ask's error when the verdict it returns was
// not the executor's but the fail-closed deny.
var ErrUnavailable = errors.New("policy decision unavailable")

// Client holds one long-lived Decide stream, reopened with backoff.
type Client struct {
	client  policyv1.PolicyDecisionServiceClient
	timeout time.Duration
	log     *slog.Logger

	send   chan *policyv1.DecideRequest
	nextID atomic.Uint64
	up     atomic.Bool

	mu      sync.Mutex
	pending map[uint64]chan *policyv1.DecideResponse
}

// New returns a Client over conn; timeout bounds each Ask. Run must be
// running for anything to be sent.
func New(conn grpc.ClientConnInterface, timeout time.Duration, log *slog.Logger) *Client {
	return &Client{
		client:  policyv1.NewPolicyDecisionServiceClient(conn),
		timeout: timeout,
		log:     log,
		send:    make(chan *policyv1.DecideRequest, 1024),
		pending: map[uint64]chan *policyv1.DecideResponse{},
	}
}

// Connected reports whether a stream is open.
func (c *Client) Connected() bool { return c.up.Load() }

// Run keeps a stream open until ctx ends: one goroutine sends what Ask and
// Report queue, this one receives; when the stream fails every pending Ask
// is denied and the stream reopened after a backoff.
func (c *Client) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := c.runStream(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		c.log.Warn("decide stream lost", "error", err, "retry_in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (c *Client) runStream(ctx context.Context) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.client.Decide(sctx)
	if err != nil {
		return fmt.Errorf("open decide stream: %w", err)
	}
	c.up.Store(true)
	c.log.Info("decide stream open")
	defer func() {
		c.up.Store(false)
		c.failPending()
	}()

	sendErr := make(chan error, 1)
	go func() { sendErr <- c.sendLoop(sctx, stream) }()
	defer func() { cancel(); <-sendErr }()

	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		c.mu.Lock()
		ch, ok := c.pending[resp.GetId()]
		delete(c.pending, resp.GetId())
		c.mu.Unlock()
		if ok {
			ch <- resp // buffered, one answer per id
		}
	}
}

func (c *Client) sendLoop(ctx context.Context, stream grpc.BidiStreamingClient[policyv1.DecideRequest, policyv1.DecideResponse]) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case req := <-c.send:
			if req.GetHttp() != nil || req.GetDns() != nil {
				// Skip questions whose asker already gave up.
				c.mu.Lock()
				_, waiting := c.pending[req.GetId()]
				c.mu.Unlock()
				if !waiting {
					continue
				}
			}
			if err := stream.Send(req); err != nil {
				return err
			}
		}
	}
}

func (c *Client) failPending() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
}

// AskHTTP asks about an HTTP request and waits for the verdict. It always
// returns one: when there is no stream, the stream breaks, or no answer
// arrives within the timeout, the verdict is a deny with reason "policy
// decision unavailable: …" and err wraps ErrUnavailable.
func (c *Client) AskHTTP(ctx context.Context, q HTTPQuestion) (Verdict, error) {
	return c.ask(ctx, q.message())
}

// AskDNS asks about a DNS query, like AskHTTP.
func (c *Client) AskDNS(ctx context.Context, q DNSQuestion) (Verdict, error) {
	return c.ask(ctx, q.message())
}

func (c *Client) ask(ctx context.Context, req *policyv1.DecideRequest) (Verdict, error) {
	id := c.nextID.Add(1)
	req.Id = id
	if !c.up.Load() {
		return unavailable(id, "no decide stream")
	}
	ch := make(chan *policyv1.DecideResponse, 1)
	c.mu.Lock()
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	t := time.NewTimer(c.timeout)
	defer t.Stop()
	select {
	case c.send <- req:
	case <-t.C:
		return unavailable(id, "send queue full")
	case <-ctx.Done():
		return unavailable(id, "request abandoned")
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return unavailable(id, "decide stream lost")
		}
		return verdict(resp), nil
	case <-t.C:
		return unavailable(id, fmt.Sprintf("no answer within %s", c.timeout))
	case <-ctx.Done():
		return unavailable(id, "request abandoned")
	}
}

func unavailable(id uint64, why string) (Verdict, error) {
	reason := ErrUnavailable.Error() + ": " + why
	return Verdict{QuestionID: id, Decision: policyv1.Decision_DECISION_DENY, RuleID: "proxy", Reason: reason},
		fmt.Errorf("%w: %s", ErrUnavailable, why)
}

// ReportOutcome queues what an allowed request led to, best effort (see
// report).
func (c *Client) ReportOutcome(o Outcome) { c.report(o.message()) }

// ReportRefusal queues a refused connection, best effort (see report).
func (c *Client) ReportRefusal(r Refusal) { c.report(r.message()) }

// report queues a report: it is dropped when there is no stream or the
// queue stays full for 50ms, so a slow executor never holds the proxy
// path.
func (c *Client) report(req *policyv1.DecideRequest) {
	req.Id = c.nextID.Add(1)
	if !c.up.Load() {
		c.log.Debug("report dropped: no decide stream")
		return
	}
	select {
	case c.send <- req:
		return
	default:
	}
	t := time.NewTimer(50 * time.Millisecond)
	defer t.Stop()
	select {
	case c.send <- req:
	case <-t.C:
		c.log.Warn("report dropped: send queue full")
	}
}
