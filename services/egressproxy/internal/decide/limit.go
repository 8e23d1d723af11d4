package decide

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// ErrRateLimited is wrapped by an Ask's error when its source was over a
// per-source limit: the verdict is the proxy's deny, given at once, and
// the executor was not asked. The proxy answers such a request with 429
// and such a query with REFUSED.
var ErrRateLimited = errors.New("rate limited")

// Limits bound what one sandbox address may ask, so that a flooding
// sandbox cannot make its neighbours' questions wait: a token bucket
// (Rate per second, Burst deep) and a bound on questions waiting for
// their answer at once, for HTTP requests and DNS queries apart. A zero
// or negative value disables its bound. HTTPInFlight is the proxy's only
// bound on a source's requests waiting for a verdict.
type Limits struct {
	HTTPRate     float64
	HTTPBurst    int
	HTTPInFlight int
	DNSRate      float64
	DNSBurst     int
	DNSInFlight  int
}

// Defaults of Limits, the proxy's flags' defaults (README: Limits).
const (
	DefaultHTTPRate     = 100
	DefaultHTTPBurst    = 200
	DefaultHTTPInFlight = 64
	DefaultDNSRate      = 100
	DefaultDNSBurst     = 200
	DefaultDNSInFlight  = 16
)

// Limit labels of sandpit_egress_rate_limited_total.
const (
	limitRate     = "rate"
	limitInFlight = "in_flight"
)

// refusalLogInterval is how often at most one source's refusals are
// logged (with their count) and reported with a reason, which the
// executor shows as a network event.
const refusalLogInterval = time.Second

// refusalReportInterval is the least time between two reports of the
// refusals counted since the last (reportRefusals): a flood costs the
// stream at most one report per refusing source and kind per interval,
// and a refusal reaches the executor's counters at most this late.
const refusalReportInterval = 10 * time.Millisecond

// maxIdleSources is the number of tracked sources past which idle ones
// (nothing in flight, bucket full) are forgotten.
const maxIdleSources = 4096

type sourceState struct {
	tokens   float64
	last     time.Time
	inFlight int
	refused  int // since logged
	logged   time.Time
	// unreported counts the refusals not yet reported; note is the
	// reason of the sampled report among them, if any.
	unreported uint32
	note       string
}

// sourceLimiter applies one kind's Limits by source address.
type sourceLimiter struct {
	kind     string
	rate     float64
	burst    float64
	inFlight int
	metrics  *Metrics
	log      *slog.Logger
	// refused, if set, is signalled (without blocking) when a refusal is
	// counted, for reportRefusals to take it.
	refused chan<- struct{}

	mu      sync.Mutex
	sources map[netip.Addr]*sourceState
	// dirty holds the sources with unreported refusals.
	dirty map[netip.Addr]*sourceState
}

func newSourceLimiter(kind string, rate float64, burst, inFlight int, m *Metrics, log *slog.Logger) *sourceLimiter {
	if burst < 1 {
		burst = 1
	}
	return &sourceLimiter{kind: kind, rate: rate, burst: float64(burst), inFlight: inFlight, metrics: m, log: log,
		sources: map[netip.Addr]*sourceState{}, dirty: map[netip.Addr]*sourceState{}}
}

// acquire admits one question from src, or says why not; release must be
// called when its answer is in.
func (l *sourceLimiter) acquire(src netip.Addr) (release func(), err error) {
	if l.rate <= 0 && l.inFlight <= 0 {
		return func() {}, nil
	}
	release, err = l.take(src, time.Now())
	if err != nil && l.refused != nil {
		select {
		case l.refused <- struct{}{}:
		default: // already signalled
		}
	}
	return release, err
}

// unreported returns, and forgets, the refusals counted since it was last
// called: one Refusal per source, with a reason when a sampled one is
// among them.
func (l *sourceLimiter) unreported() []Refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Refusal, 0, len(l.dirty))
	for a, s := range l.dirty {
		r := Refusal{SourceIP: a, Reason: s.note}
		if l.kind == kindDNS {
			r.RateLimitedDNSQueries = s.unreported
		} else {
			r.RateLimitedRequests = s.unreported
		}
		out = append(out, r)
		s.unreported, s.note = 0, ""
		delete(l.dirty, a)
	}
	return out
}

func (l *sourceLimiter) take(src netip.Addr, now time.Time) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sources[src]
	if s == nil {
		if len(l.sources) >= maxIdleSources {
			l.forgetIdle(now)
		}
		s = &sourceState{tokens: l.burst, last: now}
		l.sources[src] = s
	}
	if l.rate > 0 {
		s.tokens = min(l.burst, s.tokens+now.Sub(s.last).Seconds()*l.rate)
		s.last = now
	}
	var limit, why string
	switch {
	case l.inFlight > 0 && s.inFlight >= l.inFlight:
		limit, why = limitInFlight, fmt.Sprintf("%d %s questions of source %s already waiting for a verdict", s.inFlight, l.kind, src)
	case l.rate > 0 && s.tokens < 1:
		limit, why = limitRate, fmt.Sprintf("source %s over %g %s questions per second (burst %g)", src, l.rate, l.kind, l.burst)
	}
	if limit != "" {
		l.metrics.limitedBy(l.kind, limit)
		s.refused++
		s.unreported++
		l.dirty[src] = s
		if now.Sub(s.logged) >= refusalLogInterval {
			l.log.Warn("source over limit", "kind", l.kind, "limit", limit, "source_ip", src.String(), "refused", s.refused,
				"interval_seconds", refusalLogInterval.Seconds())
			s.note = fmt.Sprintf("%s: %d %s questions refused within %gs: %s", ErrRateLimited, s.refused, l.kind, refusalLogInterval.Seconds(), why)
			s.refused, s.logged = 0, now
		}
		return nil, fmt.Errorf("%w: %s", ErrRateLimited, why)
	}
	if l.rate > 0 {
		s.tokens--
	}
	s.inFlight++
	return func() {
		l.mu.Lock()
		s.inFlight--
		l.mu.Unlock()
	}, nil
}

// forgetIdle drops the sources whose state is the same as a new one's.
func (l *sourceLimiter) forgetIdle(now time.Time) {
	for a, s := range l.sources {
		full := l.rate <= 0 || s.tokens+now.Sub(s.last).Seconds()*l.rate >= l.burst
		if s.inFlight == 0 && full && s.unreported == 0 && now.Sub(s.logged) >= refusalLogInterval {
			delete(l.sources, a)
		}
	}
}

// limited is the verdict of a question refused by a per-source limit.
func limited(id uint64, err error) (Verdict, error) {
	return Verdict{QuestionID: id, Decision: policyv1.Decision_DECISION_DENY, RuleID: "proxy", Reason: err.Error(),
		Code: policyv1.DenialCode_DENIAL_CODE_RATE_LIMITED}, err
}

// reportRefusals reports the limiters' refusals to the executor, which
// counts every one in the execution's Result: one report per refusing
// source and kind, at most every refusalReportInterval, so a flood cannot
// crowd the stream its neighbours' questions share. Reports are best
// effort, like every report.
func (c *Client) reportRefusals(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.refusals:
		}
		for _, l := range []*sourceLimiter{c.http, c.dns} {
			for _, r := range l.unreported() {
				c.ReportRefusal(r)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(refusalReportInterval):
		}
	}
}
