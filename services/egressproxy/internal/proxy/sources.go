package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// DefaultMaxConnsPerSource is the default of --max-conns-per-source: how
// many connections one source address may hold open; a connection over
// it is refused (closed and reported with reason class
// too_many_connections). A source address is one sandbox, so one sandbox
// cannot take the proxy's descriptors from the others. Its requests
// waiting for a verdict are bounded by the decide client's in-flight
// limit (--http-in-flight), answered 429.
const DefaultMaxConnsPerSource = 256

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
