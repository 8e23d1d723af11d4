package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
)

// sourceUpstream is the upstream transport of one source address (one
// sandbox execution): connection-level state an upstream keeps (an
// NTLM/Negotiate login, a slow reader's HTTP/2 flow-control window) never
// reaches another tenant, because no connection of it ever carries another
// source's request. It records the connections it dials so that dropping
// it closes them all, idle or not.
type sourceUpstream struct {
	rt *http.Transport

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

var errSourceGone = errors.New("upstream transport closed: the source's execution ended")

// newSourceUpstream wraps t, whose DialContext must be set, so that its
// connections are tracked.
func newSourceUpstream(t *http.Transport) *sourceUpstream {
	u := &sourceUpstream{rt: t, conns: map[net.Conn]struct{}{}}
	dial := t.DialContext
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.closed {
			c.Close()
			return nil, errSourceGone
		}
		tc := &trackedUpstreamConn{Conn: c, u: u}
		u.conns[tc] = struct{}{}
		return tc, nil
	}
	return u
}

// close closes every connection the transport dialled and makes it dial
// no more.
func (u *sourceUpstream) close() {
	u.mu.Lock()
	u.closed = true
	conns := u.conns
	u.conns = nil
	u.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	u.rt.CloseIdleConnections()
}

func (u *sourceUpstream) forget(c net.Conn) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.conns, c)
}

// trackedUpstreamConn leaves its transport's set when closed.
type trackedUpstreamConn struct {
	net.Conn
	u    *sourceUpstream
	once sync.Once
}

func (c *trackedUpstreamConn) Close() error {
	c.once.Do(func() { c.u.forget(c) })
	return c.Conn.Close()
}

// upstream returns the transport src's allowed requests go through: its
// own when Config.NewUpstream is set, created on first use, else the
// shared Config.Upstream. Only a tracked source (one with a connection
// open) gets one, so there are never more than the sources holding
// connections; untrack and CloseSource drop it.
func (p *Proxy) upstream(src netip.Addr) http.RoundTripper {
	if p.cfg.NewUpstream == nil {
		return p.cfg.Upstream
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if u := p.upstreams[src]; u != nil {
		return u.rt
	}
	if p.perSource[src] == 0 {
		// Released while a request was being decided: it must not
		// create a transport nothing would drop.
		return closedUpstream{}
	}
	u := newSourceUpstream(p.cfg.NewUpstream())
	p.upstreams[src] = u
	p.cfg.Metrics.upstreamTransports(len(p.upstreams))
	return u.rt
}

// dropUpstream closes src's transport, if it has one; p.mu is held.
func (p *Proxy) dropUpstream(src netip.Addr) {
	u := p.upstreams[src]
	if u == nil {
		return
	}
	delete(p.upstreams, src)
	p.cfg.Metrics.upstreamTransports(len(p.upstreams))
	// Closing sockets does not block; no lock of u's is held by its
	// callers while they wait on p.mu.
	u.close()
}

// UpstreamsOpen returns how many per-source upstream transports are live.
func (p *Proxy) UpstreamsOpen() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.upstreams)
}

// closedUpstream fails every request: its source was released.
type closedUpstream struct{}

func (closedUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		r.Body.Close()
	}
	return nil, errSourceGone
}
