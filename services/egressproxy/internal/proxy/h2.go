package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"

	"golang.org/x/net/http2"
)

// serveH2 serves an HTTP/2 connection; every stream is decided on its own.
func (p *Proxy) serveH2(ctx context.Context, conn net.Conn, info connInfo) {
	srv := &http2.Server{IdleTimeout: p.cfg.IdleTimeout}
	srv.ServeConn(conn, &http2.ServeConnOpts{
		Context: ctx,
		// The library's own bound on a header block; the proxy's,
		// MaxHeaderBytes, is checked in the handler, so that it can answer
		// and report.
		BaseConfig: &http.Server{MaxHeaderBytes: h2MaxHeaderListBytes},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.serveH2Request(w, r, info)
		}),
	})
}

func (p *Proxy) serveH2Request(w http.ResponseWriter, r *http.Request, info connInfo) {
	if o, over := h2Oversized(r); over {
		status, body := p.refuseOversized(r.Context(), info, o)
		writeH2(w, status, body)
		return
	}
	c := p.check(info, r, "HTTP/2", r.Header.Values("Host"))
	v := p.decide(r.Context(), info, c, r.ContentLength)
	if !v.allowed {
		if s := retryAfter(v); s != "" {
			w.Header().Set("Retry-After", s)
		}
		writeH2(w, v.status, blockBody(c, v))
		return
	}
	body := &countingReader{r: r.Body, limit: v.maxBody}
	out := p.upstreamRequest(r.Context(), c, r, body)
	if err := placeSecrets(out, v); err != nil {
		p.outcome(c, v, 0, 0, 0, err)
		writeH2(w, http.StatusBadGateway, errorBody(c, err))
		return
	}
	resp, err := p.upstream(info.src).RoundTrip(out)
	if body.exceeded.Load() {
		if err == nil {
			resp.Body.Close()
		}
		p.outcome(c, v, 0, body.n.Load(), 0, errBodyTooLarge)
		writeH2(w, http.StatusRequestEntityTooLarge, tooLargeBody(c, v))
		return
	}
	if err != nil {
		err = sideOf(err, body, nil)
		p.outcome(c, v, 0, body.n.Load(), 0, err)
		writeH2(w, http.StatusBadGateway, errorBody(c, err))
		return
	}
	defer resp.Body.Close()
	if err := scrubResponse(resp, v); err != nil {
		p.outcome(c, v, resp.StatusCode, body.n.Load(), 0, err)
		writeH2(w, http.StatusBadGateway, errorBody(c, err))
		return
	}
	if v.maxResponse > 0 && resp.ContentLength > int64(v.maxResponse) && bodyAllowed(r.Method, resp.StatusCode) {
		p.outcome(c, v, resp.StatusCode, body.n.Load(), 0, errResponseTooLarge)
		writeH2(w, http.StatusForbidden, responseTooLarge(c, v, resp.ContentLength))
		return
	}
	removeHopHeaders(resp.Header)
	for k, vv := range resp.Header {
		w.Header()[k] = vv
	}
	for k := range resp.Trailer {
		w.Header().Add("Trailer", k)
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	var recv uint64
	buf := make([]byte, 32<<10)
	var werr error
	for {
		n, rerr := resp.Body.Read(buf)
		if left := v.maxResponse - recv; v.maxResponse > 0 && uint64(n) > left {
			// Past the response budget: what fits is sent, then the
			// stream is reset, so the sandbox sees the exchange fail.
			_, _ = w.Write(buf[:left])
			_ = rc.Flush()
			p.outcome(c, v, resp.StatusCode, body.n.Load(), recv+left, errResponseTooLarge)
			panic(http.ErrAbortHandler)
		}
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				werr = fmt.Errorf("%w: %w", errSandboxClosed, err)
				break
			}
			recv += uint64(n)
			_ = rc.Flush()
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			werr = rerr
			break
		}
	}
	for k, vv := range resp.Trailer {
		w.Header()[k] = vv
	}
	p.outcome(c, v, resp.StatusCode, body.n.Load(), recv, werr)
}

// h2Oversized tells whether a request is over a size bound. The target
// is checked first, as HTTP/1.1 reads it first.
func h2Oversized(r *http.Request) (oversize, bool) {
	o := oversize{protocol: "HTTP/2", method: r.Method, target: r.RequestURI, host: r.Host}
	if n := len(r.RequestURI); n > MaxTargetBytes {
		o.status, o.size = http.StatusRequestURITooLong, n
		return o, true
	}
	if n := h2HeadBytes(r); n > MaxHeaderBytes {
		o.status, o.size = http.StatusRequestHeaderFieldsTooLarge, n
		return o, true
	}
	return o, false
}

func writeH2(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
