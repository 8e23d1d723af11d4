// Package decide is the proxy's side of the executor's
// sandpit.egress.v1.DecisionService: it opens the Decide stream and says
// hello on it, asks for verdicts and matches answers by id, reports
// outcomes and refusals, and denies whenever the executor cannot answer in
// time. It is the only package that knows the wire messages.
package decide

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// MaxMessageBytes bounds every message of a Decide stream, either way: the
// executor's decision listener receives none larger (its
// decision.MaxMessageBytes is the same number, documented in
// egress.proto). The client bounds every field well below it, and a
// message that would still not fit is never sent: one request cannot
// break the stream every sandbox's egress depends on.
const MaxMessageBytes = 64 << 10

// ErrUnavailable is wrapped by an Ask's error when the verdict it returns
// was not the executor's but the fail-closed deny.
var ErrUnavailable = errors.New("policy decision unavailable")

// Hello is how the proxy introduces itself on every stream it opens.
type Hello struct {
	// Version is the proxy's.
	Version string
	// CACertPEM is the certificate of the CA the proxy mints its leaves
	// from; the executor makes every sandbox trust it.
	CACertPEM []byte
	// TransparentAddress and DNSAddress are the proxy's listeners, as
	// bound.
	TransparentAddress, DNSAddress string
}

// Config configures a Client.
type Config struct {
	// Hello is sent first on every stream.
	Hello Hello
	// Timeout bounds each question: no answer within it is a deny.
	Timeout time.Duration
	// Limits bound what one source address may ask; the zero value has
	// none.
	Limits Limits
	// Metrics, if set, count answers and fail-closed denies.
	Metrics *Metrics
	Log     *slog.Logger
}

// Client holds one long-lived Decide stream, reopened with backoff.
type Client struct {
	client  egressv1.DecisionServiceClient
	health  healthpb.HealthClient
	hello   *egressv1.DecideRequest
	timeout time.Duration
	metrics *Metrics
	log     *slog.Logger

	send   chan *egressv1.DecideRequest
	nextID atomic.Uint64
	up     atomic.Bool
	// stalled is set by a question that got no answer in time and
	// cleared by the next sign of life of the decision path (see
	// markStalled); while it is set questions are denied at once.
	stalled atomic.Bool
	stallc  chan struct{}

	http, dns *sourceLimiter
	// refusals is signalled when a limiter counted a refusal.
	refusals chan struct{}

	mu      sync.Mutex
	pending map[uint64]chan *egressv1.DecideResponse

	releases releaseHandler // release.go
}

// New returns a Client over conn. Run must be running for anything to be
// sent.
func New(conn grpc.ClientConnInterface, cfg Config) (*Client, error) {
	hello, err := cfg.Hello.message()
	if err != nil {
		return nil, err
	}
	c := &Client{
		client:   egressv1.NewDecisionServiceClient(conn),
		health:   healthpb.NewHealthClient(conn),
		hello:    hello,
		timeout:  cfg.Timeout,
		metrics:  cfg.Metrics,
		log:      cfg.Log,
		send:     make(chan *egressv1.DecideRequest, 1024),
		pending:  map[uint64]chan *egressv1.DecideResponse{},
		stallc:   make(chan struct{}, 1),
		refusals: make(chan struct{}, 1),
		http:     newSourceLimiter(kindHTTP, cfg.Limits.HTTPRate, cfg.Limits.HTTPBurst, cfg.Limits.HTTPInFlight, cfg.Metrics, cfg.Log),
		dns:      newSourceLimiter(kindDNS, cfg.Limits.DNSRate, cfg.Limits.DNSBurst, cfg.Limits.DNSInFlight, cfg.Metrics, cfg.Log),
	}
	c.http.refused, c.dns.refused = c.refusals, c.refusals
	return c, nil
}

// Keepalive of the connection to the executor: a decision path whose
// packets are dropped (no reset, no close) is found dead within
// KeepaliveTime+KeepaliveTimeout even with no question pending, and its
// stream reopened. gRPC allows no client ping interval below 10s; the
// executor's decision server permits pings this often (its keepalive
// enforcement policy).
const (
	KeepaliveTime    = 10 * time.Second
	KeepaliveTimeout = 5 * time.Second
)

// MaxRedialDelay bounds the wait between two attempts to reach the
// executor, both the connection's redials and the stream's reopenings: a
// restarted executor is served within about this of listening, however
// long it was down (gRPC's own redial backoff grows to two minutes).
const MaxRedialDelay = time.Second

// DialOptions are the options the connection to the executor needs
// besides its credentials.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: KeepaliveTime, Timeout: KeepaliveTimeout, PermitWithoutStream: true,
		}),
		// gRPC's default backoff (1.6x, 20% jitter) but from 100ms and
		// capped; a connection attempt still gets the default 20s.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: MaxRedialDelay},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
}

// probeInterval is how often a stalled client checks whether the
// decision path answers again.
const probeInterval = 250 * time.Millisecond

// Stalled reports whether questions are being denied at once because the
// last one went unanswered.
func (c *Client) Stalled() bool { return c.stalled.Load() }

// markStalled makes every question fail at once after one went
// unanswered: with the decision path cut (packets dropped, nothing
// closed) each would otherwise wait the full timeout, one after another.
// The probe loop clears it as soon as the executor answers anything.
func (c *Client) markStalled() {
	if c.stalled.CompareAndSwap(false, true) {
		c.log.Warn("decide stream stalled: denying at once until the executor answers again", "timeout_seconds", c.timeout.Seconds())
		c.metrics.setStalled(true)
		select {
		case c.stallc <- struct{}{}:
		default:
		}
	}
}

func (c *Client) clearStalled(why string) {
	if c.stalled.CompareAndSwap(true, false) {
		c.log.Info("decide stream healthy again", "cause", why)
		c.metrics.setStalled(false)
	}
}

// probe waits for a stall and then asks the executor's health service,
// over the same connection, until something answers: any reply but a
// deadline or an unavailable transport proves the path carries bytes
// again.
func (c *Client) probe(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.stallc:
		}
		for c.stalled.Load() {
			pctx, cancel := context.WithTimeout(ctx, max(c.timeout, time.Second))
			_, err := c.health.Check(pctx, &healthpb.HealthCheckRequest{})
			cancel()
			if ctx.Err() != nil {
				return
			}
			switch status.Code(err) {
			case codes.DeadlineExceeded, codes.Unavailable, codes.Canceled:
			default:
				c.clearStalled("probe answered")
				continue
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(probeInterval):
			}
		}
	}
}

// Connected reports whether a stream is open and the proxy has said hello
// on it.
func (c *Client) Connected() bool { return c.up.Load() }

// Run keeps a stream open until ctx ends: one goroutine sends what the
// askers and reporters queue, this one receives; when the stream fails
// every pending question is denied and the stream reopened after a
// backoff.
func (c *Client) Run(ctx context.Context) {
	var helpers sync.WaitGroup
	helpers.Go(func() { c.probe(ctx) })
	helpers.Go(func() { c.reportRefusals(ctx) })
	defer helpers.Wait()
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := c.runStream(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			delay = 100 * time.Millisecond
		}
		c.log.Warn("decide stream lost", "error", err, "retry_in_seconds", delay.Seconds())
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay/2 + rand.N(delay/2+1)):
		}
		delay = min(delay*2, MaxRedialDelay)
	}
}

func (c *Client) runStream(ctx context.Context) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.client.Decide(sctx, grpc.MaxCallSendMsgSize(MaxMessageBytes), grpc.MaxCallRecvMsgSize(MaxMessageBytes))
	if err != nil {
		return fmt.Errorf("open decide stream: %w", err)
	}
	if err := stream.Send(c.hello); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	c.up.Store(true)
	c.metrics.setConnected(true)
	c.log.Info("decide stream open")
	c.clearStalled("fresh stream")
	defer func() {
		c.up.Store(false)
		c.metrics.setConnected(false)
		c.failPending()
	}()

	// A stream that can no longer send is as dead as one that cannot
	// receive: the sender ends both, so that pending questions are denied
	// at once rather than one timeout after another.
	sendErr := make(chan error, 1)
	go func() {
		err := c.sendLoop(sctx, stream)
		cancel()
		sendErr <- err
	}()
	for {
		resp, err := stream.Recv()
		if err != nil {
			cancel()
			if serr := <-sendErr; serr != nil {
				return fmt.Errorf("send: %w", serr)
			}
			return fmt.Errorf("receive: %w", err)
		}
		c.clearStalled("answer received")
		if c.notice(resp) {
			continue
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

func (c *Client) sendLoop(ctx context.Context, stream grpc.BidiStreamingClient[egressv1.DecideRequest, egressv1.DecideResponse]) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case req := <-c.send:
			if q := req.GetQuestion(); q != nil {
				// Skip questions whose asker already gave up.
				c.mu.Lock()
				_, waiting := c.pending[q.GetId()]
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
//
// A source over its Limits gets a deny at once, without asking, whose
// err wraps ErrRateLimited.
func (c *Client) AskHTTP(ctx context.Context, q HTTPQuestion) (Verdict, error) {
	return c.askWithin(ctx, c.http, q.SourceIP, kindHTTP, q.message)
}

// AskDNS asks about a DNS query, like AskHTTP.
func (c *Client) AskDNS(ctx context.Context, q DNSQuestion) (Verdict, error) {
	return c.askWithin(ctx, c.dns, q.SourceIP, kindDNS, q.message)
}

// askWithin asks the question message makes, under lim's bounds for src:
// over them, the deny comes at once, without asking.
func (c *Client) askWithin(ctx context.Context, lim *sourceLimiter, src netip.Addr, kind string, message func(id uint64) *egressv1.DecideRequest) (Verdict, error) {
	id := c.nextID.Add(1)
	release, err := lim.acquire(src)
	if err != nil {
		return limited(id, err)
	}
	defer release()
	return c.ask(ctx, kind, id, message(id))
}

func (c *Client) ask(ctx context.Context, kind string, id uint64, req *egressv1.DecideRequest) (Verdict, error) {
	start := time.Now()
	if n := proto.Size(req); n > MaxMessageBytes {
		// Cannot happen with the fields bounded as they are; were it to,
		// sending would break the stream for every sandbox.
		return c.deny(id, causeTooLarge, fmt.Sprintf("question of %d bytes over the decision stream's limit of %d", n, MaxMessageBytes))
	}
	if !c.up.Load() {
		return c.deny(id, causeNoStream, "no decide stream")
	}
	if c.stalled.Load() {
		return c.deny(id, causeStalled, fmt.Sprintf("decide stream stalled (a question got no answer within %s)", c.timeout))
	}
	ch := make(chan *egressv1.DecideResponse, 1)
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
		return c.deny(id, causeSendQueueFull, "send queue full")
	case <-ctx.Done():
		return c.deny(id, causeAbandoned, "request abandoned")
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return c.deny(id, causeStreamLost, "decide stream lost")
		}
		c.metrics.answered(kind, time.Since(start))
		return verdict(resp), nil
	case <-t.C:
		c.markStalled()
		return c.deny(id, causeTimeout, fmt.Sprintf("no answer within %s", c.timeout))
	case <-ctx.Done():
		return c.deny(id, causeAbandoned, "request abandoned")
	}
}

// deny is the fail-closed verdict when the executor did not answer, and
// counts it by cause.
func (c *Client) deny(id uint64, cause, why string) (Verdict, error) {
	c.metrics.failed(cause)
	reason := ErrUnavailable.Error() + ": " + why
	return Verdict{QuestionID: id, Decision: policyv1.Decision_DECISION_DENY, RuleID: "proxy", Reason: reason,
		Code: policyv1.DenialCode_DENIAL_CODE_DECISION_UNAVAILABLE}, fmt.Errorf("%w: %s", ErrUnavailable, why)
}

// ReportOutcome queues what an allowed request led to, best effort (see
// report).
func (c *Client) ReportOutcome(o Outcome) { c.report(o.message()) }

// ReportRefusal queues a refused connection, best effort (see report).
func (c *Client) ReportRefusal(r Refusal) { c.report(r.message()) }

// report queues a report: it is dropped when there is no stream or the
// queue stays full for 50ms, so a slow executor never holds the proxy
// path.
func (c *Client) report(req *egressv1.DecideRequest) {
	if n := proto.Size(req); n > MaxMessageBytes {
		c.log.Error("report dropped: over the decision stream's message limit", "bytes", n)
		return
	}
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
