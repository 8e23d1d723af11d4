// Package proxy is the transparent listener every sandbox TCP connection is
// redirected to: it terminates TLS with minted leaves, parses HTTP/1.1 and
// HTTP/2, asks the decider about each request and forwards exactly the
// request it checked.
package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/redact"
	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// Decider answers the questions the proxy asks about each request and
// takes its reports. AskHTTP always returns a verdict (a deny when it
// fails); reports are best effort.
type Decider interface {
	AskHTTP(ctx context.Context, q decide.HTTPQuestion) (decide.Verdict, error)
	// AskTLS is asked before a leaf is minted for a server name.
	AskTLS(ctx context.Context, q decide.TLSQuestion) (decide.Verdict, error)
	ReportOutcome(o decide.Outcome)
	ReportRefusal(r decide.Refusal)
}

// Minter provides TLS leaves for sandbox connections.
type Minter interface {
	Certificate(host string) (*tls.Certificate, error)
	// Cached reports whether host's leaf is at hand, so that Certificate
	// would not mint one.
	Cached(host string) bool
}

// Config wires a Proxy.
type Config struct {
	Minter   Minter
	Decider  Decider
	Redactor *redact.Redactor
	// Upstream carries allowed requests of every source when NewUpstream
	// is nil; it must not follow redirects (an *http.Transport does not)
	// and must dial through the checking dialer.
	Upstream http.RoundTripper
	// NewUpstream, if set, returns a fresh upstream transport (as
	// NewTransport does, with DialContext set); each source address gets
	// its own on first use and none of its connections serves another
	// source. It is closed, connections and all, when the source's
	// execution is released (CloseSource) or its last connection ends.
	NewUpstream func() *http.Transport
	// OriginalDst returns where a connection was headed before the
	// redirect; nil means SocketOriginalDst. Tests inject it.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// HandshakeTimeout bounds reading the first bytes and the TLS
	// handshake; zero means 10s.
	HandshakeTimeout time.Duration
	// IdleTimeout bounds waiting for the next request on a connection;
	// zero means 2 minutes.
	IdleTimeout time.Duration
	// PassthroughIdleTimeout closes a spliced TLS connection on which
	// nothing moved either way for that long; zero means
	// DefaultPassthroughIdleTimeout.
	PassthroughIdleTimeout time.Duration
	// MaxConnsPerSource bounds the open connections of one source
	// address; zero means DefaultMaxConnsPerSource.
	MaxConnsPerSource int
	// LeafMintRate and LeafMintBurst bound the new leaves one source
	// address may have minted (a token bucket; a cached leaf is free);
	// zero means DefaultLeafMintRate and DefaultLeafMintBurst, a negative
	// rate no bound.
	LeafMintRate  float64
	LeafMintBurst int
	// WebSocket bounds each relayed WebSocket (websocket.go).
	WebSocket WebSocketLimits
	Metrics   *Metrics
	Log       *slog.Logger
}

// Proxy serves redirected sandbox connections.
type Proxy struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	conns map[net.Conn]tracked
	// perSource counts conns by source address.
	perSource map[netip.Addr]int
	// upstreams holds each source's own transport (Config.NewUpstream).
	upstreams map[netip.Addr]*sourceUpstream
	// gates holds each source's server-name answers and mint bucket
	// (mintgate.go).
	gates map[netip.Addr]*sourceGate

	accept acceptState
}

// New returns a Proxy.
func New(cfg Config) *Proxy {
	if cfg.OriginalDst == nil {
		cfg.OriginalDst = SocketOriginalDst
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.PassthroughIdleTimeout == 0 {
		cfg.PassthroughIdleTimeout = DefaultPassthroughIdleTimeout
	}
	if cfg.Redactor == nil {
		cfg.Redactor = redact.New(nil)
	}
	if cfg.MaxConnsPerSource == 0 {
		cfg.MaxConnsPerSource = DefaultMaxConnsPerSource
	}
	if cfg.LeafMintRate == 0 {
		cfg.LeafMintRate = DefaultLeafMintRate
	}
	if cfg.LeafMintBurst == 0 {
		cfg.LeafMintBurst = DefaultLeafMintBurst
	}
	return &Proxy{cfg: cfg, log: cfg.Log, conns: map[net.Conn]tracked{}, perSource: map[netip.Addr]int{}, upstreams: map[netip.Addr]*sourceUpstream{}, gates: map[netip.Addr]*sourceGate{}}
}

// Serve accepts connections until ctx ends, then closes the listener and
// every open connection and waits for their goroutines.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		p.closeAll()
	})
	defer stop()
	defer wg.Wait()
	var backoff time.Duration
	for {
		c, err := acceptNext(ln, backoff != 0)
		if errors.Is(err, errAcceptWaits) {
			// A descriptor is free and no connection waits: the listener
			// accepts again, though nothing has arrived to prove it.
			backoff = 0
			p.acceptOK()
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// Out of descriptors (EMFILE, ENFILE) or any other failure:
			// connections that end free some, so keep trying, as
			// net/http does, instead of returning and leaving every
			// connection open with nothing accepted.
			backoff = min(max(2*backoff, acceptRetryMin), acceptRetryMax)
			p.acceptFailed(err, backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		if backoff != 0 {
			backoff = 0
			p.acceptOK()
		}
		wg.Go(func() {
			defer c.Close()
			// The connection's context ends when it does, and so does
			// every upstream request it made.
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			src := sourceOf(c)
			switch err := p.track(c, src, cancel); {
			case errors.Is(err, errShuttingDown):
				return
			case err != nil:
				info := connInfo{src: src}
				info.dst, _ = p.cfg.OriginalDst(c)
				p.refuse(info, refusedTooManyConns, err.Error(), nil)
				return
			}
			defer p.untrack(c)
			setKeepAlive(c)
			p.handleConn(cctx, c)
		})
	}
}

// connInfo is what is known of a connection before its first request.
type connInfo struct {
	src    netip.Addr
	dst    netip.AddrPort
	scheme string // http or https
	sni    string // canonical; https only
}

func (p *Proxy) handleConn(ctx context.Context, c net.Conn) {
	info := connInfo{src: sourceOf(c)}
	dst, err := p.cfg.OriginalDst(c)
	if err != nil {
		p.refuse(info, refusedNoOriginalDst, "no original destination", err)
		return
	}
	info.dst = dst
	_ = c.SetDeadline(time.Now().Add(p.cfg.HandshakeTimeout))
	br := bufio.NewReaderSize(c, MaxHeaderBytes)
	first, err := br.Peek(1)
	if err != nil {
		return // closed before sending anything: nothing to decide
	}
	if first[0] == 0x16 { // TLS handshake record
		p.serveTLS(ctx, c, br, info)
		return
	}
	switch sniffHTTP(br) {
	case httpYes:
		_ = c.SetDeadline(time.Time{})
		info.scheme = "http"
		p.serveH1(ctx, c, br, info)
	case httpPrior:
		p.refuse(info, refusedH2CPrior, "HTTP/2 without TLS (h2c prior knowledge) is not supported", nil)
	default:
		p.refuse(info, refusedNotHTTP, "not HTTP or TLS", nil)
	}
}

type sniff int

const (
	httpNo sniff = iota
	httpYes
	httpPrior
)

// sniffHTTP looks for a request line's method token ("GET ").
func sniffHTTP(br *bufio.Reader) sniff {
	for n := 1; n <= 20; n++ {
		b, err := br.Peek(n)
		if err != nil {
			return httpNo
		}
		c := b[n-1]
		if c == ' ' {
			if n == 1 {
				return httpNo
			}
			if string(b) == "PRI " {
				return httpPrior
			}
			return httpYes
		}
		if c < 'A' || c > 'Z' {
			return httpNo
		}
	}
	return httpNo
}

func (p *Proxy) serveTLS(ctx context.Context, c net.Conn, br *bufio.Reader, info connInfo) {
	info.scheme = "https"
	hello, seen, err := readClientHello(br)
	if name, dot := trailingDotSNI(seen); err != nil && dot {
		p.refuse(info, refusedInvalidSNI, trailingDotReason(name), err)
		return
	}
	if err != nil {
		p.refuse(info, refusedBadClientHello, "malformed TLS ClientHello", err)
		return
	}
	if hello.ServerName == "" {
		p.refuse(info, refusedNoSNI, "TLS without SNI", nil)
		return
	}
	sni, err := canon.CanonicalHost(hello.ServerName)
	if err != nil {
		p.refuse(info, refusedInvalidSNI, "invalid TLS server name", err)
		return
	}
	info.sni = sni.Name
	class, reason, v := p.gateServerName(ctx, info)
	switch {
	case class == refusedSNIUndecided:
		// Over its question limits: the limiter logs and reports that,
		// sampled, rather than once per connection.
		p.cfg.Metrics.refusal(class)
		return
	case class != "" && v.Passthrough:
		// The executor recorded the refused pass-through itself.
		p.logRefusal(info, class, reason, nil)
		return
	case class != "":
		p.refuse(info, class, reason, nil)
		return
	case v.Passthrough:
		p.splice(ctx, c, seen, br, info, v)
		return
	}
	replay := &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(seen), br)}
	tc := tls.Server(replay, &tls.Config{
		// The leaf is minted for the SNI checked above, whatever the
		// handshake may say later.
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.cfg.Minter.Certificate(sni.Name) },
		NextProtos:     []string{"h2", "http/1.1"},
		MinVersion:     tls.VersionTLS12,
	})
	hctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		p.refuse(info, refusedHandshakeFailed, "TLS handshake failed", err)
		return
	}
	_ = c.SetDeadline(time.Time{})
	if tc.ConnectionState().NegotiatedProtocol == "h2" {
		p.serveH2(ctx, tc, info)
		return
	}
	p.serveH1(ctx, tc, bufio.NewReaderSize(tc, MaxHeaderBytes), info)
}

// refuse ends a connection before any request. class is what the metric
// counts, one of a few; reason, in words, goes to the log and the report.
func (p *Proxy) refuse(info connInfo, class, reason string, err error) {
	p.logRefusal(info, class, reason, err)
	p.cfg.Decider.ReportRefusal(decide.Refusal{SourceIP: info.src, Destination: info.dst, Reason: reason})
}

// logRefusal is refuse without the report, for a refusal the executor
// recorded when it answered.
func (p *Proxy) logRefusal(info connInfo, class, reason string, err error) {
	dst := ""
	if info.dst.IsValid() {
		dst = info.dst.String()
	}
	p.log.Info("connection refused", "source_ip", info.src.String(), "destination", dst, "reason", reason, "error", err)
	p.cfg.Metrics.refusal(class)
}

var errHelloRead = errors.New("client hello read")

// readClientHello parses the ClientHello with crypto/tls itself, over a
// connection that records what it reads and cannot write, so the bytes
// can be replayed to the real handshake (or, later, passed through).
func readClientHello(r io.Reader) (*tls.ClientHelloInfo, []byte, error) {
	var seen bytes.Buffer
	var hello *tls.ClientHelloInfo
	err := tls.Server(sniffConn{r: io.TeeReader(r, &seen)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hello = &tls.ClientHelloInfo{ServerName: h.ServerName, SupportedProtos: h.SupportedProtos}
			return nil, errHelloRead
		},
	}).Handshake()
	if hello == nil {
		if err == nil {
			err = errors.New("no ClientHello")
		}
		return nil, seen.Bytes(), err
	}
	return hello, seen.Bytes(), nil
}

type sniffConn struct {
	net.Conn // nil: only Read is used
	r        io.Reader
}

func (s sniffConn) Read(b []byte) (int, error)       { return s.r.Read(b) }
func (s sniffConn) Write(b []byte) (int, error)      { return 0, io.ErrClosedPipe }
func (s sniffConn) Close() error                     { return nil }
func (s sniffConn) SetDeadline(time.Time) error      { return nil }
func (s sniffConn) SetReadDeadline(time.Time) error  { return nil }
func (s sniffConn) SetWriteDeadline(time.Time) error { return nil }
func (s sniffConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (s sniffConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// replayConn reads from r (the peeked bytes, then the rest) and writes to
// the connection.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(b []byte) (int, error) { return c.r.Read(b) }
