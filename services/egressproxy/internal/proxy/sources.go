package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/sandpit-run/sandpit/services/policy"
)

// Per-source bounds, the defaults of --max-conns-per-source and
// --max-decisions-per-source. A source address is one sandbox, so one
// sandbox cannot take the proxy's descriptors or the decide stream from
// the others.
const (
	// DefaultMaxConnsPerSource is how many connections one source address
	// may hold open; a connection over it is refused (closed and reported
	// with reason class too_many_connections).
	DefaultMaxConnsPerSource = 256
	// DefaultMaxDecisionsPerSource is how many of one source address's
	// requests may wait for a verdict at once; a request over it waits
	// up to decisionSlotWait for a slot, then is denied by the proxy
	// (rule proxy) without asking.
	DefaultMaxDecisionsPerSource = 64

	// decisionSlotWait is how long a request over its source's decision
	// bound waits for a slot before it is denied: a burst is delayed,
	// only a flood is refused.
	decisionSlotWait = 2 * time.Second
)

// Sandbox connection keepalive: a sandbox whose namespace vanished sends
// no FIN or RST, and an idle connection to it is dropped after about
// keepAliveIdle + keepAliveCount × keepAliveInterval (30 s).
const (
	keepAliveIdle     = 15 * time.Second
	keepAliveInterval = 5 * time.Second
	keepAliveCount    = 3
)

// tracked is what Serve knows of an open connection.
type tracked struct {
	src    netip.Addr
	cancel context.CancelFunc
}

var errShuttingDown = errors.New("proxy shutting down")

func sourceOf(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

func setKeepAlive(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: keepAliveIdle, Interval: keepAliveInterval, Count: keepAliveCount})
	}
}

// track records c, unless its source is at its bound or the proxy is
// shutting down.
func (p *Proxy) track(c net.Conn, src netip.Addr, cancel context.CancelFunc) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return errShuttingDown
	}
	if n := p.perSource[src]; n >= p.cfg.MaxConnsPerSource {
		p.cfg.Metrics.sourceLimit(limitConnections)
		return fmt.Errorf("too many connections from this source: %d open, the limit is %d", n, p.cfg.MaxConnsPerSource)
	}
	p.conns[c] = tracked{src: src, cancel: cancel}
	p.perSource[src]++
	return nil
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.conns[c]
	if !ok {
		return
	}
	delete(p.conns, c)
	if p.perSource[t.src]--; p.perSource[t.src] <= 0 {
		delete(p.perSource, t.src)
		p.dropUpstream(t.src)
	}
}

// closeAll closes every connection and stops tracking: Serve is ending.
func (p *Proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	for src := range p.upstreams {
		p.dropUpstream(src)
	}
}

// CloseSource closes every connection from src, cancels its upstream
// requests, closes its upstream transport and forgets its server-name
// answers; it returns how many connections there were. The executor asks for it when
// the execution holding src ends.
func (p *Proxy) CloseSource(src netip.Addr) int {
	src = src.Unmap()
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c, t := range p.conns {
		if t.src == src {
			t.cancel()
			c.Close()
			n++
		}
	}
	p.dropUpstream(src)
	delete(p.gates, src)
	if n > 0 {
		p.log.Info("released source", "source_ip", src.String(), "connections_closed", n)
	}
	return n
}

// ConnsFrom returns how many connections from src are open.
func (p *Proxy) ConnsFrom(src netip.Addr) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.perSource[src.Unmap()]
}

// sourceSlots are one source address's decision slots.
type sourceSlots struct {
	ch    chan struct{} // one element per decision in flight
	users int           // holders and waiters; at 0 the entry goes
}

// startDecision takes one of src's decision slots, waiting up to
// decisionSlotWait for one to free; it returns false when none did (or
// ctx ended). endDecision gives it back.
func (p *Proxy) startDecision(ctx context.Context, src netip.Addr) bool {
	p.mu.Lock()
	s := p.deciding[src]
	if s == nil {
		s = &sourceSlots{ch: make(chan struct{}, p.cfg.MaxDecisionsPerSource)}
		p.deciding[src] = s
	}
	s.users++
	p.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(decisionSlotWait)
	defer t.Stop()
	select {
	case s.ch <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	p.cfg.Metrics.sourceLimit(limitDecisions)
	p.dropSlots(src, s)
	return false
}

func (p *Proxy) endDecision(src netip.Addr) {
	p.mu.Lock()
	s := p.deciding[src]
	p.mu.Unlock()
	<-s.ch
	p.dropSlots(src, s)
}

func (p *Proxy) dropSlots(src netip.Addr, s *sourceSlots) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.users--; s.users == 0 {
		delete(p.deciding, src)
	}
}

// overDecisionLimit is the verdict of a request over its source's
// decision bound: denied by the proxy, the decider not asked.
func (p *Proxy) overDecisionLimit() verdict {
	return verdict{
		allowed: false,
		label:   policy.LabelDeny,
		rule:    "proxy",
		status:  http.StatusForbidden,
		reason:  fmt.Sprintf("too many requests from this source waiting for a policy decision (limit %d, waited %v)", p.cfg.MaxDecisionsPerSource, decisionSlotWait),
		at:      time.Now(),
	}
}
