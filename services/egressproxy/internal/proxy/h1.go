package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"time"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// serveH1 reads HTTP/1.x requests one after another (keep-alive) and
// answers each. It reads the request head itself so that the Host header
// survives an absolute-form target, which net/http would fold into r.Host,
// and so that a head or target over its bound is answered, and reported,
// before any of it is parsed. br must buffer at least MaxHeaderBytes.
func (p *Proxy) serveH1(ctx context.Context, conn net.Conn, br *bufio.Reader, info connInfo) {
	for ctx.Err() == nil {
		_ = conn.SetReadDeadline(time.Now().Add(p.cfg.IdleTimeout))
		line, hdr, err := peekHead(br)
		if o, over := h1Oversized(line, hdr, err); over {
			p.refuseOversizedH1(ctx, conn, br, info, o)
			return
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !isTimeout(err) {
				refuseUnreadable(conn, info, "bad request head: "+err.Error())
			}
			return
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			p.unparsable(ctx, conn, line, hdr, info, err)
			return
		}
		_ = conn.SetReadDeadline(time.Time{})
		if !p.serveOneH1(ctx, conn, br, req, hdr.Values("Host"), info) {
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// unparsable answers a request net/http refuses to parse. When its request
// line is well formed (typically a target with an invalid escape) it is
// still decided, so the attempt is logged as blocked with its reason.
func (p *Proxy) unparsable(ctx context.Context, conn net.Conn, line string, hdr textproto.MIMEHeader, info connInfo, err error) {
	method, target, ok := requestLine(line)
	if !ok {
		refuseUnreadable(conn, info, "bad request: "+err.Error())
		return
	}
	req := &http.Request{Method: method, RequestURI: target, Header: http.Header(hdr), ContentLength: -1}
	req.Host = hdr.Get("Host")
	hdr.Del("Host")
	c := p.check(info, req, "HTTP/1.1", nil)
	c.block(unparsableReason(err))
	v := p.decide(ctx, info, c, -1)
	writeResponse(bufio.NewWriter(conn), v.status, "application/json", blockBody(c, v), true)
}

// h1Oversized tells whether the head peekHead returned (or failed on) is
// over a size bound. The target is checked first.
func h1Oversized(line string, hdr textproto.MIMEHeader, err error) (oversize, bool) {
	method, target, ok := requestLine(line)
	o := oversize{protocol: "HTTP/1.1", method: method, target: target, host: hdr.Get("Host")}
	switch {
	case errors.Is(err, errLineTooLong):
		// Only part of the target was read: its length is unknown.
		method, target, _ = strings.Cut(line, " ")
		o.method, o.target, o.status = method, target, http.StatusRequestURITooLong
	case (err == nil || errors.Is(err, errHeadTooLarge)) && ok && len(target) > MaxTargetBytes:
		o.status, o.size = http.StatusRequestURITooLong, len(target)
	case errors.Is(err, errHeadTooLarge):
		o.status = http.StatusRequestHeaderFieldsTooLarge
	default:
		return o, false
	}
	return o, true
}

// requestLine splits an HTTP/1.x request line.
func requestLine(line string) (method, target string, ok bool) {
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !strings.HasPrefix(proto, "HTTP/1.") || method == "" || target == "" {
		return method, target, false
	}
	return method, target, true
}

// peekHead's errors for a head over MaxHeaderBytes: with or without the
// request line ending within it.
var (
	errHeadTooLarge = errors.New("request head too large")
	errLineTooLong  = errors.New("request line too long")
)

// peekHead returns the request line and headers of the request head
// waiting in br, without consuming them. When the head is over
// MaxHeaderBytes the error is errHeadTooLarge, with the line, or
// errLineTooLong, with as much of the line as was read.
func peekHead(br *bufio.Reader) (string, textproto.MIMEHeader, error) {
	var hs headScan
	return hs.peek(br)
}

// headScan finds the end of a request head as it arrives. Only the bytes
// that arrived since the last look are searched (and the three before
// them, where an end could have begun), so a head trickled byte by byte
// costs time linear in its length, not quadratic.
type headScan struct {
	// searched is how many bytes from the head's start hold no end.
	searched int
	// scanned counts the bytes searched, for the tests.
	scanned int
}

func (hs *headScan) peek(br *bufio.Reader) (string, textproto.MIMEHeader, error) {
	n := max(br.Buffered(), 1)
	tooLarge := func(b []byte) (string, textproto.MIMEHeader, error) {
		line, _, found := bytes.Cut(b, []byte("\r\n"))
		if !found {
			return string(line), nil, errLineTooLong
		}
		return string(line), nil, errHeadTooLarge
	}
	for {
		b, err := br.Peek(n)
		if err != nil {
			if len(b) > 0 && errors.Is(err, bufio.ErrBufferFull) {
				return tooLarge(b)
			}
			return "", nil, err
		}
		from := max(hs.searched-3, 0)
		hs.scanned += len(b) - from
		if i := bytes.Index(b[from:], []byte("\r\n\r\n")); i >= 0 {
			b = b[:from+i+4]
			line, rest, _ := bytes.Cut(b, []byte("\r\n"))
			hdr, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(rest))).ReadMIMEHeader()
			if err != nil {
				return "", nil, err
			}
			return string(line), hdr, nil
		}
		hs.searched = len(b)
		if n >= MaxHeaderBytes {
			return tooLarge(b)
		}
		// All that is buffered was searched: wait for at least one more byte.
		n = min(max(br.Buffered(), n+1), MaxHeaderBytes)
	}
}

// serveOneH1 handles one request; it reports whether the connection can
// carry another.
func (p *Proxy) serveOneH1(ctx context.Context, conn net.Conn, br *bufio.Reader, req *http.Request, hosts []string, info connInfo) bool {
	defer req.Body.Close()
	c := p.check(info, req, "HTTP/1.1", hosts)
	v := p.decide(ctx, info, c, req.ContentLength)
	keep := !req.Close && req.ProtoAtLeast(1, 1)
	bw := bufio.NewWriterSize(conn, 16<<10)
	if !v.allowed {
		// Read what the client still sends of the body (a little of it),
		// so that closing does not reset the connection and throw away
		// the 403 before the client reads it; an unread body would also be
		// parsed as the next request.
		drained := req.ContentLength == 0 || drainBody(conn, req.Body)
		writeResponse(bw, v.status, "application/json", blockBody(c, v), !keep || !drained, retryAfterLine(v))
		return keep && drained
	}
	if headerHasToken(req.Header, "Expect", "100-continue") {
		if _, err := io.WriteString(conn, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			return false
		}
	}
	// The transport closes the body it sends; the connection's reader must
	// stay usable for the next request on a kept-alive connection.
	body := &countingReader{r: io.NopCloser(req.Body), limit: v.maxBody}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := p.upstreamRequest(rctx, c, req, body)
	if err := placeSecrets(out, v); err != nil {
		p.outcome(c, v, 0, 0, 0, err)
		writeResponse(bw, http.StatusBadGateway, "application/json", errorBody(c, err), true)
		return false
	}
	// With nothing left to read of the request, a read on the sandbox's
	// connection tells when it closes: the upstream request is cancelled
	// then rather than left waiting for an answer.
	stopWatch := func() {}
	if req.ContentLength == 0 && !c.websocket {
		stopWatch = watchClose(conn, br, cancel)
	}
	resp, err := p.upstream(info.src).RoundTrip(out)
	stopWatch()
	if body.exceeded.Load() {
		if err == nil {
			resp.Body.Close()
		}
		p.outcome(c, v, 0, body.n.Load(), 0, errBodyTooLarge)
		writeResponse(bw, http.StatusRequestEntityTooLarge, "application/json", tooLargeBody(c, v), true)
		return false
	}
	if err != nil {
		err = sideOf(err, body, nil)
		p.outcome(c, v, 0, body.n.Load(), 0, err)
		writeResponse(bw, http.StatusBadGateway, "application/json", errorBody(c, err), true)
		return false
	}
	if c.websocket && resp.StatusCode == http.StatusSwitchingProtocols {
		p.spliceWebSocket(ctx, conn, br, bw, c, resp, v)
		return false
	}
	defer resp.Body.Close()
	if err := scrubResponse(resp, v); err != nil {
		p.outcome(c, v, resp.StatusCode, body.n.Load(), 0, err)
		writeResponse(bw, http.StatusBadGateway, "application/json", errorBody(c, err), true)
		return false
	}
	if v.maxResponse > 0 && resp.ContentLength > int64(v.maxResponse) && bodyAllowed(req.Method, resp.StatusCode) {
		p.outcome(c, v, resp.StatusCode, body.n.Load(), 0, errResponseTooLarge)
		writeResponse(bw, http.StatusForbidden, "application/json", responseTooLarge(c, v, resp.ContentLength), true)
		return false
	}

	removeHopHeaders(resp.Header)
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	resp.Close = !keep
	resp.TransferEncoding = nil
	if resp.ContentLength < 0 && bodyAllowed(req.Method, resp.StatusCode) {
		// Chunked also when the response budget may cut the body: a
		// chunked body cut short fails in the client, where a body
		// delimited by the close would look complete.
		if keep || v.maxResponse > 0 && req.ProtoAtLeast(1, 1) {
			resp.TransferEncoding = []string{"chunked"}
		}
	}
	recv := &countingReader{r: resp.Body, limit: v.maxResponse, over: errResponseTooLarge}
	// Flush what was written before every read from upstream, so streamed
	// responses (server-sent events) reach the sandbox as they arrive.
	resp.Body = flushingReader{r: recv, w: bw}
	// writerOnly hides bw's ReadFrom, which would read into the buffer
	// flushingReader flushes.
	werr := resp.Write(writerOnly{bw})
	if werr == nil {
		werr = bw.Flush()
	}
	status := resp.StatusCode
	if recv.exceeded.Load() {
		// What was counted reaches the sandbox; the body's end never does.
		_ = bw.Flush()
	}
	if werr != nil {
		p.outcome(c, v, status, body.n.Load(), recv.n.Load(), sideOf(werr, body, recv))
		return false
	}
	p.outcome(c, v, status, body.n.Load(), recv.n.Load(), nil)
	if !keep || resp.Close {
		return false
	}
	// Whatever of the request body upstream did not read would be parsed as
	// the next request: drain a little, else close.
	if _, err := io.Copy(io.Discard, io.LimitReader(req.Body, 256<<10)); err != nil {
		return false
	}
	n, _ := req.Body.Read(make([]byte, 1))
	return n == 0
}

// refuseOversizedH1 answers an oversized request and closes the
// connection: what is left of the request cannot be told from a next one.
// What the client still sends is read and dropped for a moment first, so
// that it gets to read the answer rather than a reset.
func (p *Proxy) refuseOversizedH1(ctx context.Context, conn net.Conn, br *bufio.Reader, info connInfo, o oversize) {
	status, body := p.refuseOversized(ctx, info, o)
	writeResponse(bufio.NewWriter(conn), status, "application/json", body, true)
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(br, 4<<20))
}

// drainBody discards up to 256 KiB of a refused request's body, for at
// most two seconds, and reports whether it reached the end.
func drainBody(conn net.Conn, body io.Reader) bool {
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	if _, err := io.Copy(io.Discard, io.LimitReader(body, 256<<10)); err != nil {
		return false
	}
	n, _ := body.Read(make([]byte, 1))
	return n == 0
}

func bodyAllowed(method string, status int) bool {
	return method != http.MethodHead && status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

type flushingReader struct {
	r io.Reader
	w *bufio.Writer
}

func (f flushingReader) Read(b []byte) (int, error) {
	if err := f.w.Flush(); err != nil {
		return 0, err
	}
	return f.r.Read(b)
}

func (f flushingReader) Close() error { return nil }

type writerOnly struct{ io.Writer }

func writeResponse(bw *bufio.Writer, status int, contentType string, body []byte, closeConn bool, extra ...string) {
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n",
		status, http.StatusText(status), contentType, len(body))
	if closeConn {
		bw.WriteString("Connection: close\r\n")
	}
	for _, h := range extra {
		if h != "" {
			bw.WriteString(h + "\r\n")
		}
	}
	bw.WriteString("\r\n")
	bw.Write(body)
	_ = bw.Flush()
}

// retryAfterLine is the Retry-After header line of a refusal by a rate,
// or "".
func retryAfterLine(v verdict) string {
	if s := retryAfter(v); s != "" {
		return "Retry-After: " + s
	}
	return ""
}

// refuseUnreadable answers 400, with the refusal body, to bytes the proxy
// could not read as a request: there was nothing to decide, so nothing is
// reported, and only the sandbox that sent them sees why.
func refuseUnreadable(conn net.Conn, info connInfo, why string) {
	c := &checked{scheme: info.scheme, port: info.dst.Port(), host: info.sni}
	v := verdict{rule: "proxy", reason: why, code: policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST}
	writeResponse(bufio.NewWriter(conn), http.StatusBadRequest, "application/json", blockBody(c, v), true)
}

// watchClose reads from the sandbox's connection while its request waits
// for upstream, and cancels when the sandbox closes it (or it fails), as
// net/http's server does with its background read. Bytes that arrive (a
// pipelined request) stay in br. The returned stop ends the watch; it must
// be called before br is read again.
func watchClose(conn net.Conn, br *bufio.Reader, cancel context.CancelFunc) (stop func()) {
	_ = conn.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := br.Peek(1); err != nil && !isTimeout(err) {
			cancel()
		}
	}()
	return func() {
		// A deadline in the past ends the Peek at once.
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = conn.SetReadDeadline(time.Time{})
	}
}
