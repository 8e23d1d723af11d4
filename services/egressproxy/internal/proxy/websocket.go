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

// relayEnd is why a WebSocket relay ended, in the words its outcome
// reports. Which side closed is the side whose connection ended first:
// frames are not inspected, so a close handshake the sandbox began, which
// the upstream ends by closing its connection, reads as the upstream's.
type relayEnd string

func (e relayEnd) Error() string { return string(e) }

const (
	endSandboxClosed  relayEnd = "websocket closed by the sandbox"
	endUpstreamClosed relayEnd = "websocket closed by the upstream"
	endReleased       relayEnd = "websocket closed by the proxy: the execution ended or the proxy stopped"
)

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
	maxSent, sentRule := v.maxBody, "limits.max_request_bytes"
	if maxSent == 0 {
		maxSent, sentRule = lim.MaxSentBytes, "the proxy's websocket-max-sent-bytes"
	}
	r := &wsRelay{conn: conn, up: up}
	r.touch()
	sent := &countingReader{r: io.NopCloser(br), limit: maxSent}
	maxRecv, recvRule := lim.MaxReceivedBytes, "the proxy's websocket-max-received-bytes"
	if v.maxResponse > 0 && v.maxResponse < maxRecv {
		maxRecv, recvRule = v.maxResponse, "limits.max_total_response_bytes"
	}
	recv := &countingReader{r: up, limit: maxRecv}

	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() { r.watchIdle(lim.IdleTimeout, done) })
	wg.Go(func() {
		_, err := io.Copy(up, activeReader{r: sent, relay: r})
		switch {
		case sent.exceeded.Load():
			r.cut(relayEnd(fmt.Sprintf("websocket cut: the sandbox sent more than %d bytes (%s)", maxSent, sentRule)))
		case ctx.Err() != nil:
			r.cut(endReleased)
		case err == nil:
			// The sandbox half-closed: pass that on and keep relaying what
			// the upstream still sends.
			r.end(endSandboxClosed)
			if cw, ok := up.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				return
			}
			r.closeBoth()
		case sent.failed.Load():
			r.cut(endSandboxClosed)
		default:
			r.cut(endUpstreamClosed)
		}
	})
	_, err := io.Copy(conn, activeReader{r: recv, relay: r})
	switch {
	case recv.exceeded.Load():
		r.cut(relayEnd(fmt.Sprintf("websocket cut: the upstream sent more than %d bytes (%s)", maxRecv, recvRule)))
	case ctx.Err() != nil:
		r.cut(endReleased)
	case err == nil, recv.failed.Load():
		r.cut(endUpstreamClosed)
	default:
		r.cut(endSandboxClosed)
	}
	close(done)
	wg.Wait()
	// Both directions are done, each having recorded a reason first.
	why := r.reason
	p.log.Info("websocket ended", "source_ip", addrString(sourceOf(conn)), "host", c.host, "path", p.cfg.Redactor.Path(c.path),
		"bytes_sent", sent.n.Load(), "bytes_received", recv.n.Load(), "reason", string(why))
	p.outcome(c, v, resp.StatusCode, sent.n.Load(), recv.n.Load(), why)
}

// wsRelay is the state both directions of a relay share: when a byte last
// moved, and the first reason to end it.
type wsRelay struct {
	conn net.Conn
	up   io.Closer

	last   atomic.Int64 // UnixNano of the last read either way
	once   sync.Once
	reason relayEnd
}

func (r *wsRelay) touch() { r.last.Store(time.Now().UnixNano()) }

// end records why the relay ends, unless a reason came first.
func (r *wsRelay) end(why relayEnd) { r.once.Do(func() { r.reason = why }) }

// cut ends the relay for why and closes both sides.
func (r *wsRelay) cut(why relayEnd) {
	r.end(why)
	r.closeBoth()
}

func (r *wsRelay) closeBoth() {
	r.conn.Close()
	r.up.Close()
}

// watchIdle cuts the relay once nothing moved for idle, until done.
func (r *wsRelay) watchIdle(idle time.Duration, done <-chan struct{}) {
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
			r.cut(relayEnd(fmt.Sprintf("websocket closed: nothing moved either way for %s (the proxy's websocket-idle-timeout)", idle)))
			return
		}
		t.Reset(idle - quiet)
	}
}

// activeReader marks the relay active at every read that returns bytes.
type activeReader struct {
	r     io.Reader
	relay *wsRelay
}

func (a activeReader) Read(b []byte) (int, error) {
	n, err := a.r.Read(b)
	if n > 0 {
		a.relay.touch()
	}
	return n, err
}
