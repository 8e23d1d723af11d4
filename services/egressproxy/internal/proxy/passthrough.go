package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
)

// DefaultPassthroughIdleTimeout is the default of --passthrough-idle-timeout:
// a spliced TLS connection on which nothing moved either way for this long
// is closed. Like a WebSocket's, it is longer than common keepalives.
const DefaultPassthroughIdleTimeout = 2 * time.Minute

var errNoDialer = errors.New("pass-through needs an upstream transport that dials")

// splice passes a TLS connection the executor passed through (v) to its
// upstream without interception: it dials the server name on the original
// destination port through the source's upstream dialer (the checking
// dialer, with its overrides), sends it the ClientHello already read
// (hello), then relays bytes both ways, bounded by what was left of the
// execution's byte totals (v's bounds, TLS records counted) and the
// pass-through idle timeout; the source's release closes it. The executor
// recorded the connection when it answered; the outcome reports the bytes
// each way, the ClientHello included, and the connection's duration.
func (p *Proxy) splice(ctx context.Context, c net.Conn, hello []byte, br *bufio.Reader, info connInfo, v decide.Verdict) {
	start := time.Now()
	report := func(sent, recv uint64, why string) {
		d := time.Since(start)
		p.cfg.Metrics.upstreamDone(d)
		p.log.Info("pass-through ended", "source_ip", info.src.String(), "host", info.sni, "port", info.dst.Port(),
			"bytes_sent", sent, "bytes_received", recv, "reason", why)
		p.cfg.Decider.ReportOutcome(decide.Outcome{QuestionID: v.QuestionID, BytesSent: sent, BytesReceived: recv, Duration: d, Error: why})
	}
	dial := p.dialer(info.src)
	if dial == nil {
		report(0, 0, errNoDialer.Error())
		return
	}
	dctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	up, err := dial(dctx, "tcp", net.JoinHostPort(info.sni, strconv.Itoa(int(info.dst.Port()))))
	cancel()
	if err != nil {
		text, class := outcomeError(err)
		p.log.Warn("upstream failed", "host", info.sni, "class", class, "error", err)
		report(0, 0, text)
		return
	}
	defer up.Close()
	_ = c.SetDeadline(time.Time{})
	sent, recv, why := relay(ctx, c, io.MultiReader(bytes.NewReader(hello), br), up, relayBounds{
		what:    "pass-through",
		maxSent: v.MaxRequestBytes, sentRule: "limits.max_total_request_bytes",
		maxRecv: v.MaxResponseBytes, recvRule: "limits.max_total_response_bytes",
		idle: p.cfg.PassthroughIdleTimeout, idleRule: "the proxy's passthrough-idle-timeout",
	})
	report(sent, recv, string(why))
}

// dialer returns how src's upstream connections are dialed: the dialer
// of its upstream transport (tracked, so that the source's release closes
// what it dialed), or nil when the transport is not an *http.Transport.
func (p *Proxy) dialer(src netip.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if t, ok := p.upstream(src).(*http.Transport); ok && t.DialContext != nil {
		return t.DialContext
	}
	return nil
}
