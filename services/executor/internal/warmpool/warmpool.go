// Package warmpool keeps sandboxes booted ahead of time (sandbox.Warm), each
// for exactly one execution: taken, it is never given again, and the pool
// boots another in the background. Sandboxes past their age, whose node
// ended or whose egress no longer matches the proxy's are recycled; when
// the pool stops, every unclaimed sandbox is discarded.
package warmpool

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sandbox is one pooled sandbox as the pool sees it.
type Sandbox interface {
	// Alive reports whether it can still be claimed: its node waits and
	// its egress is what a sandbox booted now would have.
	Alive() bool
	// Born is when its boot began.
	Born() time.Time
	// Discard removes it, unclaimed, in the background.
	Discard()
}

// Config sizes the pool and says how to boot its sandboxes.
type Config struct {
	// Size is how many ready sandboxes the pool keeps.
	Size int
	// MaxAge is how long an unclaimed sandbox is kept before it is
	// recycled.
	MaxAge time.Duration
	// Boot boots one sandbox.
	Boot func(ctx context.Context) (Sandbox, error)
	// Retry is how long the pool waits after a failed boot; 0 is
	// DefaultRetry.
	Retry time.Duration
}

// DefaultRetry is Config.Retry's default.
const DefaultRetry = 2 * time.Second

// Pool holds ready sandboxes; the zero Pool is not usable, see New.
type Pool struct {
	cfg Config
	log *slog.Logger
	m   *metrics

	mu    sync.Mutex
	ready []Sandbox // oldest first
	// stopped is set once Run returned: nothing is kept after it.
	stopped bool
	kick    chan struct{}
}

// New returns a pool; Run fills it. Its metrics are registered on reg, nil
// for none.
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) *Pool {
	if cfg.Retry == 0 {
		cfg.Retry = DefaultRetry
	}
	return &Pool{cfg: cfg, log: log, m: newMetrics(reg), kick: make(chan struct{}, 1)}
}

// Take returns a ready sandbox, taken out of the pool, or nil when it has
// none; the pool then boots one to replace it.
func (p *Pool) Take() Sandbox {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.ready) > 0 {
		sb := p.ready[0]
		p.ready = p.ready[1:]
		p.m.ready.Set(float64(len(p.ready)))
		p.wake()
		if sb.Alive() && time.Since(sb.Born()) < p.cfg.MaxAge {
			p.m.taken.WithLabelValues("warm").Inc()
			return sb
		}
		p.m.recycled.Inc()
		sb.Discard()
	}
	p.m.taken.WithLabelValues("empty").Inc()
	return nil
}

// Ready is how many sandboxes are ready now.
func (p *Pool) Ready() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready)
}

func (p *Pool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Run keeps the pool full, one boot at a time, until ctx ends; then it
// discards every sandbox it holds and returns.
func (p *Pool) Run(ctx context.Context) {
	defer p.drain()
	// Each tick recycles what is no longer claimable (a proxy that came,
	// went or changed its CA makes sandboxes booted before it so).
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		p.recycle()
		for p.Ready() < p.cfg.Size && ctx.Err() == nil {
			if !p.boot(ctx) {
				select {
				case <-ctx.Done():
				case <-time.After(p.cfg.Retry):
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-tick.C:
		}
	}
}

// boot boots one sandbox into the pool and reports whether it did.
func (p *Pool) boot(ctx context.Context) bool {
	p.m.booting.Set(1)
	defer p.m.booting.Set(0)
	t0 := time.Now()
	sb, err := p.cfg.Boot(ctx)
	if err != nil {
		if ctx.Err() == nil {
			p.m.boots.WithLabelValues("failed").Inc()
			p.log.Error("warm sandbox did not boot; retrying", "error", err, "retry_seconds", p.cfg.Retry.Seconds())
		}
		return false
	}
	p.m.boots.WithLabelValues("ok").Inc()
	p.m.bootSeconds.Observe(time.Since(t0).Seconds())
	p.mu.Lock()
	defer p.mu.Unlock()
	if ctx.Err() != nil {
		sb.Discard()
		return false
	}
	p.ready = append(p.ready, sb)
	p.m.ready.Set(float64(len(p.ready)))
	return true
}

// recycle discards the ready sandboxes that are too old or no longer
// alive.
func (p *Pool) recycle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	keep := p.ready[:0]
	for _, sb := range p.ready {
		if sb.Alive() && time.Since(sb.Born()) < p.cfg.MaxAge {
			keep = append(keep, sb)
			continue
		}
		p.m.recycled.Inc()
		sb.Discard()
	}
	clear(p.ready[len(keep):])
	p.ready = keep
	p.m.ready.Set(float64(len(p.ready)))
}

func (p *Pool) drain() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, sb := range p.ready {
		sb.Discard()
	}
	p.ready = nil
	p.m.ready.Set(0)
}

type metrics struct {
	ready, booting prometheus.Gauge
	taken          *prometheus.CounterVec
	boots          *prometheus.CounterVec
	recycled       prometheus.Counter
	bootSeconds    prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	warm := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sandpit_warm_sandboxes",
		Help: "Warm sandboxes (booted ahead of time, each for one execution), by state: ready, or booting.",
	}, []string{"state"})
	m := &metrics{
		ready:   warm.WithLabelValues("ready"),
		booting: warm.WithLabelValues("booting"),
		taken: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_warm_pool_takes_total",
			Help: "Executions that asked the warm pool for a sandbox, by outcome: warm (got one), or empty (none was ready; the execution ran cold).",
		}, []string{"outcome"}),
		boots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_warm_boots_total",
			Help: "Warm sandbox boots, by result (ok, failed).",
		}, []string{"result"}),
		recycled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sandpit_warm_recycled_total",
			Help: "Warm sandboxes discarded unclaimed: past --warm-pool-max-age, node ended, or their egress no longer matched the proxy's.",
		}),
		bootSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sandpit_warm_boot_seconds",
			Help:    "Time to boot one warm sandbox, up to node waiting for its program.",
			Buckets: prometheus.ExponentialBuckets(0.025, 2, 10),
		}),
	}
	if reg != nil {
		reg.MustRegister(warm, m.taken, m.boots, m.recycled, m.bootSeconds)
	}
	return m
}
