package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// WebSocketLimits bound one relayed WebSocket, whose bytes are counted as
// they cross the proxy after TLS: frames with their headers. Zero fields
// take the defaults below, the defaults of --websocket-max-sent-bytes,
// --websocket-max-received-bytes and --websocket-idle-timeout.
type WebSocketLimits struct {
	// MaxSentBytes bounds what the sandbox sends over one WebSocket when
	// its policy sets no limits.max_request_bytes; when it sets one, that
	// is the bound: a WebSocket is one request whose body is everything
	// the sandbox sends on it.
	MaxSentBytes uint64
	// MaxReceivedBytes bounds what one WebSocket carries to the sandbox.
	MaxReceivedBytes uint64
	// IdleTimeout closes a WebSocket on which nothing moved either way
	// for that long.
	IdleTimeout time.Duration
}

// Defaults of WebSocketLimits. A sandbox lives minutes at most (the
// executor's longest timeout is 5 minutes), so these bound only a
// WebSocket used as a bulk channel, or one left open and forgotten; the
// idle timeout is longer than the 25–30 s keepalive pings common servers
// and clients send.
const (
	DefaultWebSocketMaxSentBytes     = 64 << 20
	DefaultWebSocketMaxReceivedBytes = 256 << 20
	DefaultWebSocketIdleTimeout      = 60 * time.Second
)

func (l WebSocketLimits) withDefaults() WebSocketLimits {
	if l.MaxSentBytes == 0 {
		l.MaxSentBytes = DefaultWebSocketMaxSentBytes
	}
	if l.MaxReceivedBytes == 0 {
		l.MaxReceivedBytes = DefaultWebSocketMaxReceivedBytes
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultWebSocketIdleTimeout
	}
	return l
}

// relayEnd is why a relay (a WebSocket, a TLS pass-through) ended, in the
// words its outcome reports. Which side closed is the side whose connection ended first:
// frames are not inspected, so a close handshake the sandbox began, which
// the upstream ends by closing its connection, reads as the upstream's.
type relayEnd string

func (e relayEnd) Error() string { return string(e) }

// spliceWebSocket relays an accepted WebSocket upgrade: the 101 goes to
// the sandbox, then bytes are copied both ways until either side closes,
// a direction passes its byte bound (the relay is cut there: no byte past
// it is passed on), or nothing moves for the idle timeout. The outcome
// reports the bytes each way and why the relay ended.
func (p *Proxy) spliceWebSocket(ctx context.Context, conn net.Conn, br *bufio.Reader, bw *bufio.Writer, c *checked, resp *http.Response, v verdict) {
	up, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		p.outcome(c, v, resp.StatusCode, 0, 0, errors.New("upstream 101 without a writable body"))
		return
	}
	defer up.Close()
	fmt.Fprintf(bw, "HTTP/1.1 101 Switching Protocols\r\n")
	h := resp.Header.Clone()
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", "websocket")
	_ = h.Write(bw)
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		p.outcome(c, v, resp.StatusCode, 0, 0, fmt.Errorf("%w: %w", errSandboxClosed, err))
		return
	}

	lim := p.cfg.WebSocket.withDefaults()
	b := relayBounds{what: "websocket", maxSent: v.maxBody, sentRule: "limits.max_request_bytes",
		maxRecv: lim.MaxReceivedBytes, recvRule: "the proxy's websocket-max-received-bytes",
		idle: lim.IdleTimeout, idleRule: "the proxy's websocket-idle-timeout"}
	if b.maxSent == 0 {
		b.maxSent, b.sentRule = lim.MaxSentBytes, "the proxy's websocket-max-sent-bytes"
	}
	if v.maxResponse > 0 && v.maxResponse < b.maxRecv {
		b.maxRecv, b.recvRule = v.maxResponse, "limits.max_total_response_bytes"
	}
	sent, recv, why := relay(ctx, conn, br, up, b)
	p.log.Info("websocket ended", "source_ip", addrString(sourceOf(conn)), "host", c.host, "path", p.cfg.Redactor.Path(c.path),
		"bytes_sent", sent, "bytes_received", recv, "reason", string(why))
	p.outcome(c, v, resp.StatusCode, sent, recv, why)
}

// relayBounds bound a relay: the bytes each way (0 is no bound) and the
// rule that says so, and how long nothing may move. what names the relay
// in the reasons it ends with.
type relayBounds struct {
	what               string
	maxSent, maxRecv   uint64
	sentRule, recvRule string
	idle               time.Duration
	idleRule           string
}

// relay copies bytes both ways, from in (the sandbox's side, read) to up
// and from up to conn, until either side closes, a direction passes its
// byte bound (the relay is cut there: no byte past it is passed on), ctx
// ends, or nothing moves for the idle bound. It returns the bytes each way
// and why it ended. Each direction copies through one buffer of io.Copy's.
func relay(ctx context.Context, conn net.Conn, in io.Reader, up io.ReadWriteCloser, b relayBounds) (sentN, recvN uint64, why relayEnd) {
	sandboxClosed, upstreamClosed := relayEnd(b.what+" closed by the sandbox"), relayEnd(b.what+" closed by the upstream")
	released := relayEnd(b.what + " closed by the proxy: the execution ended or the proxy stopped")
	r := &relayState{conn: conn, up: up}
	r.touch()
	sent := &countingReader{r: io.NopCloser(in), limit: b.maxSent}
	recv := &countingReader{r: up, limit: b.maxRecv}

	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() { r.watchIdle(b, done) })
	wg.Go(func() {
		_, err := io.Copy(up, activeReader{r: sent, relay: r})
		switch {
		case sent.exceeded.Load():
			r.cut(relayEnd(fmt.Sprintf("%s cut: the sandbox sent more than %d bytes (%s)", b.what, b.maxSent, b.sentRule)))
		case ctx.Err() != nil:
			r.cut(released)
		case err == nil:
			// The sandbox half-closed: pass that on and keep relaying what
			// the upstream still sends.
			r.end(sandboxClosed)
			if cw, ok := up.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				return
			}
			r.closeBoth()
		case sent.failed.Load():
			r.cut(sandboxClosed)
		default:
			r.cut(upstreamClosed)
		}
	})
	_, err := io.Copy(conn, activeReader{r: recv, relay: r})
	switch {
	case recv.exceeded.Load():
		r.cut(relayEnd(fmt.Sprintf("%s cut: the upstream sent more than %d bytes (%s)", b.what, b.maxRecv, b.recvRule)))
	case ctx.Err() != nil:
		r.cut(released)
	case err == nil, recv.failed.Load():
		r.cut(upstreamClosed)
	default:
		r.cut(sandboxClosed)
	}
	close(done)
	wg.Wait()
	// Both directions are done, each having recorded a reason first.
	return sent.n.Load(), recv.n.Load(), r.reason
}

// relayState is the state both directions of a relay share: when a byte last
// moved, and the first reason to end it.
type relayState struct {
	conn net.Conn
	up   io.Closer

	last   atomic.Int64 // UnixNano of the last read either way
	once   sync.Once
	reason relayEnd
}

func (r *relayState) touch() { r.last.Store(time.Now().UnixNano()) }

// end records why the relay ends, unless a reason came first.
func (r *relayState) end(why relayEnd) { r.once.Do(func() { r.reason = why }) }

// cut ends the relay for why and closes both sides.
func (r *relayState) cut(why relayEnd) {
	r.end(why)
	r.closeBoth()
}

func (r *relayState) closeBoth() {
	r.conn.Close()
	r.up.Close()
}

// watchIdle cuts the relay once nothing moved for b.idle, until done.
func (r *relayState) watchIdle(b relayBounds, done <-chan struct{}) {
	idle := b.idle
	t := time.NewTimer(idle)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		quiet := time.Since(time.Unix(0, r.last.Load()))
		if quiet >= idle {
			r.cut(relayEnd(fmt.Sprintf("%s closed: nothing moved either way for %s (%s)", b.what, idle, b.idleRule)))
			return
		}
		t.Reset(idle - quiet)
	}
}

// activeReader marks the relay active at every read that returns bytes.
type activeReader struct {
	r     io.Reader
	relay *relayState
}

func (a activeReader) Read(b []byte) (int, error) {
	n, err := a.r.Read(b)
	if n > 0 {
		a.relay.touch()
	}
	return n, err
}
