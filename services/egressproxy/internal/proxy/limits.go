package proxy

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/sandpit-run/sandpit/services/daemon/bound"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// Size bounds of a request, the same for HTTP/1.1 and HTTP/2. A request
// over one is answered by the proxy itself (431 or 414, with the JSON body
// of every refusal) and reported to the executor as a blocked request,
// before anything of it is forwarded: no request can outgrow what the
// decision stream carries, and a sandbox sees why.
const (
	// MaxHeaderBytes bounds the request head, counted as HTTP/1.1 writes
	// it: the request line and every header field as "name: value\r\n".
	// An HTTP/2 request's pseudo-headers and fields are counted the same
	// way.
	MaxHeaderBytes = 64 << 10
	// MaxTargetBytes bounds the request target as received: path and
	// query, before normalization.
	MaxTargetBytes = decide.MaxTargetBytes

	// h2MaxHeaderListBytes is how much of an HTTP/2 header block the
	// server keeps (HPACK means a block is decoded whole either way).
	// Between MaxHeaderBytes and it, the proxy answers 431 itself; above
	// it the HTTP/2 library does, with a body of its own and no report, or
	// for a block far larger, or a single field larger than it, closes the
	// connection. It is that large so that a big cookie or query still
	// gets the proxy's answer; a handler holds it only until it refuses.
	h2MaxHeaderListBytes = 2 << 20

	// oversizedPathBytes is how much of an oversized request's path is
	// reported: enough to tell which request it was. Its query is never
	// reported: it may hold secrets the proxy did not get to redact.
	oversizedPathBytes = 1 << 10
)

// oversize is what is known of a request over a size bound: method,
// target and host as sent, any of them possibly partial or empty.
type oversize struct {
	protocol, method, target, host string
	// status is 414 (target) or 431 (head).
	status int
	// size is the target's or head's length, 0 when it is only known to
	// be over the bound.
	size int
}

// checked describes the request for its report and refusal body.
func (o oversize) checked(info connInfo) *checked {
	c := &checked{
		method:   o.method,
		scheme:   info.scheme,
		port:     info.dst.Port(),
		protocol: o.protocol,
		status:   o.status,
	}
	switch h, _, err := canon.SplitHostPort(o.host); {
	case o.host != "" && err == nil:
		c.host = h.Name
	case info.sni != "":
		c.host = info.sni
	case info.dst.IsValid():
		c.host = info.dst.Addr().String()
	}
	path, _, _ := strings.Cut(o.target, "?")
	c.path = bound.String(path, oversizedPathBytes)
	what, limit := "request header fields", MaxHeaderBytes
	c.hint = fmt.Sprintf("send at most %d bytes of request headers (names, values and line ends together); a large cookie is the usual cause", MaxHeaderBytes)
	if o.status == http.StatusRequestURITooLong {
		what, limit = "request target", MaxTargetBytes
		c.hint = fmt.Sprintf("keep the path and query under %d bytes; send large parameters in the request body", MaxTargetBytes)
	}
	c.violation = fmt.Sprintf("%s over the proxy's limit of %d bytes", what, limit)
	if o.size > 0 {
		c.violation = fmt.Sprintf("%s of %d bytes over the proxy's limit of %d", what, o.size, limit)
	}
	return c
}

// refuseOversized reports an oversized request as blocked and returns the
// status and body to answer it with.
func (p *Proxy) refuseOversized(ctx context.Context, info connInfo, o oversize) (int, []byte) {
	c := o.checked(info)
	v := p.decide(ctx, info, c, -1)
	return c.status, blockBody(c, v)
}

// h2HeadBytes counts an HTTP/2 request's head as HTTP/1.1 would write it.
func h2HeadBytes(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + len(" HTTP/1.1\r\n") + len("Host: \r\n") + len(r.Host) + len("\r\n")
	for k, vv := range r.Header {
		for _, v := range vv {
			n += len(k) + len(": \r\n") + len(v)
		}
	}
	return n
}
