package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/swap"
	"github.com/sandpit-run/sandpit/services/policy"
	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// checked is a request as the proxy understood it: what is decided is
// exactly what is forwarded.
type checked struct {
	method    string
	scheme    string
	host      string // canonical
	port      uint16
	authority string // host[:port] for the upstream request
	path      string // normalized
	query     string // raw, validated
	protocol  string
	websocket bool
	violation string
	// For a request refused over a size bound: the status it gets (0 is
	// 403), and the hint of its refusal body.
	status int
	hint   string
	// found are the secrets' placeholders the request carries.
	found []*egressv1.FoundPlaceholder
}

func (c *checked) block(why string) {
	if c.violation == "" {
		c.violation = why
	}
}

// check canonicalizes r and records the first reason it must be blocked.
// hostHeaders are the Host header values as sent (HTTP/1.1 reads them
// before net/http folds an absolute-form target into r.Host).
func (p *Proxy) check(info connInfo, r *http.Request, protocol string, hostHeaders []string) *checked {
	c := &checked{
		method:    r.Method,
		scheme:    info.scheme,
		port:      info.dst.Port(),
		protocol:  protocol,
		websocket: isWebSocket(r.Header),
	}
	if r.Method != strings.ToUpper(r.Method) {
		c.block("method is not upper case")
	}
	if r.Method == http.MethodConnect {
		c.block("CONNECT is not supported: the proxy is transparent")
	}
	if len(r.Method) > decide.MaxMethodBytes {
		c.block(fmt.Sprintf("method longer than %d bytes", decide.MaxMethodBytes))
	}

	target := r.RequestURI
	authority := r.Host
	if target != "" && !strings.HasPrefix(target, "/") && target != "*" {
		// Absolute form: its authority must be the Host header's.
		u, err := url.Parse(target)
		if err != nil || u.Host == "" || u.Opaque != "" {
			c.block("malformed absolute-form request target")
		} else {
			if u.Scheme != info.scheme {
				c.block("absolute-form target scheme differs from the connection's (" + info.scheme + ")")
			}
			if u.User != nil {
				c.block("userinfo in request target")
			}
			authority = u.Host
			rest := target[strings.Index(target, "//")+2:]
			if i := strings.IndexAny(rest, "/?"); i >= 0 {
				target = rest[i:]
				if strings.HasPrefix(target, "?") {
					target = "/" + target
				}
			} else {
				target = "/"
			}
		}
		if len(hostHeaders) == 0 && protocol == "HTTP/1.1" {
			c.block("absolute-form target without Host header")
		}
	}

	h, port, err := canon.SplitHostPort(authority)
	switch {
	case authority == "":
		c.block("no Host")
		c.host = ""
	case err != nil:
		c.block("invalid host")
		c.host = strings.ToLower(authority)
	default:
		c.host = h.Name
		if port != "" && port != strconv.Itoa(int(c.port)) {
			c.block(fmt.Sprintf("port in the request differs from the connection's port %d", c.port))
		}
	}
	for _, hv := range hostHeaders {
		hh, hport, err := canon.SplitHostPort(hv)
		if err != nil || hh.Name != c.host || (hport != "" && hport != strconv.Itoa(int(c.port))) {
			c.block("Host header does not match the request target")
		}
	}
	if info.scheme == "https" && c.host != info.sni {
		c.block("request host does not match the TLS server name")
	}

	path, query, err := canon.CanonicalTarget(target)
	if err != nil {
		c.block(targetReason(err))
		c.path = truncate(strings.SplitN(target, "?", 2)[0])
	} else {
		c.path, c.query = path, query
	}

	if up := r.Header.Get("Upgrade"); up != "" && !c.websocket {
		c.block(upgradeReason(up))
	}
	if r.Header.Get("Http2-Settings") != "" {
		c.block("h2c upgrade is not supported")
	}
	if c.websocket && protocol != "HTTP/1.1" {
		c.block("WebSocket over HTTP/2 is not supported")
	}

	c.authority = c.host
	if h.IsIP() && h.IP.Is6() {
		c.authority = "[" + c.host + "]"
	}
	if (c.scheme == "https" && c.port != 443) || (c.scheme == "http" && c.port != 80) {
		c.authority += ":" + strconv.Itoa(int(c.port))
	}
	c.findPlaceholders(r)
	return c
}

func truncate(s string) string {
	if len(s) > 256 {
		return s[:256]
	}
	return s
}

func isWebSocket(h http.Header) bool {
	return headerHasToken(h, "Connection", "upgrade") && headerHasToken(h, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// verdict is the decision on one request.
type verdict struct {
	id      uint64
	allowed bool
	label   string // policy.DecisionLabel of the verdict enforced
	rule    string
	source  string // the policy the rule is of
	reason  string
	// code says why a refused request was refused (or would be).
	code policyv1.DenialCode
	at   time.Time
	// maxBody is the most request body bytes to forward, maxResponse the
	// most response body bytes to return; 0 is no limit.
	maxBody, maxResponse uint64
	// status answers a refused request: 403, or 429 when its source was
	// over a per-source limit and the executor was not asked, or the
	// executor refused it by a rate (retryAfter seconds, for Retry-After).
	status     int
	retryAfter uint32
	// swaps are the secrets to place into an allowed request.
	swaps []swap.Swap
}

// decide asks about c, whose declared body length is contentLength (-1
// when unknown).
func (p *Proxy) decide(ctx context.Context, info connInfo, c *checked, contentLength int64) verdict {
	// The policy sees the redacted path too: a rule matches a token
	// segment with a wildcard, never by its value.
	path := p.cfg.Redactor.Path(c.path)
	resp, err := p.cfg.Decider.AskHTTP(ctx, decide.HTTPQuestion{
		SourceIP:        info.src,
		Method:          c.method,
		Scheme:          c.scheme,
		Host:            c.host,
		Port:            c.port,
		Path:            path,
		Query:           p.cfg.Redactor.Query(c.query),
		ContentLength:   contentLength,
		Protocol:        c.protocol,
		WebSocket:       c.websocket,
		Violation:       c.violation,
		ViolationStatus: c.status,
		Placeholders:    c.found,
	})
	v := verdict{id: resp.QuestionID, rule: resp.RuleID, source: resp.Source, reason: resp.Reason, code: resp.Code, at: time.Now(),
		maxBody: resp.MaxRequestBytes, maxResponse: resp.MaxResponseBytes, status: http.StatusForbidden}
	if errors.Is(err, decide.ErrRateLimited) {
		v.status = http.StatusTooManyRequests
	}
	if resp.RetryAfterSeconds > 0 && !resp.Forward() {
		v.status, v.retryAfter = http.StatusTooManyRequests, resp.RetryAfterSeconds
	}
	v.label = policy.DecisionLabel(resp.Decision)
	v.allowed = v.label != policy.LabelDeny
	if v.allowed {
		v.swaps = swapsOf(resp.Swaps)
	}
	if c.violation != "" {
		v.allowed, v.label, v.rule, v.source, v.reason, v.swaps = false, policy.LabelDeny, "proxy", "", c.violation, nil
		v.code = policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST
	}
	p.cfg.Metrics.request(v.label, c.protocol)
	if v.status == http.StatusTooManyRequests && v.retryAfter == 0 {
		return v // the limiter logs these, sampled
	}
	p.log.Info("request", "source_ip", addrString(info.src), "method", c.method, "host", c.host, "path", path,
		"protocol", c.protocol, "decision", v.label, "rule_id", v.rule, "source", v.source, "reason", v.reason,
		"execution_id", resp.ExecutionID, "placeholders", len(c.found), "secrets_placed", len(v.swaps), "error", err)
	return v
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// apiError is the "error" member API SDKs (Stripe's, OpenAI's, ...) look
// for in an error body: without it some treat a 403 as a success.
type apiError struct {
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// errorBody is the 502 body of an allowed request whose upstream failed:
// a class and a fixed message (upstreamerr.go), never the error itself,
// which can name resolved internal addresses; outcome logs that.
func errorBody(c *checked, err error) []byte {
	class := upstreamErrorClass(err)
	b, _ := json.Marshal(struct {
		Decision string   `json:"decision"`
		Host     string   `json:"host"`
		Error    apiError `json:"error"`
	}{"allowed", c.host, apiError{Type: "sandpit_upstream_error", Code: class, Message: upstreamErrorMessages[class]}})
	return append(b, '\n')
}

// hopHeaders are connection-specific (RFC 9110 7.6.1) and never forwarded.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopHeaders(h http.Header) {
	for _, v := range h.Values("Connection") {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// overrideHeaders make common server frameworks route a request by another
// method or path than its own (Rack::MethodOverride, Express
// method-override, Symfony, IIS URL Rewrite, Zend): the policy decided the
// request's method and path, so these never reach the upstream.
var overrideHeaders = []string{
	"X-Http-Method-Override", "X-Http-Method", "X-Method-Override",
	"X-Original-Url", "X-Rewrite-Url",
}

// removeOverrideHeaders also removes spellings with "_" for "-", which CGI
// style servers read as the same header.
func removeOverrideHeaders(h http.Header) {
	for k := range h {
		n := strings.ReplaceAll(k, "_", "-")
		for _, o := range overrideHeaders {
			if strings.EqualFold(n, o) {
				delete(h, k)
			}
		}
	}
}

// errBodyTooLarge ends a request body that grew past the policy's limit,
// errResponseTooLarge a response body past what is left of the
// execution's max_total_response_bytes.
var (
	errBodyTooLarge     = errors.New("request body larger than the policy allows")
	errResponseTooLarge = errors.New("response body cut: the execution's max_total_response_bytes is spent")
)

// countingReader counts bytes read through it and, with a limit, stops with
// errBodyTooLarge at the first byte past it: no more than limit bytes are
// ever passed on.
type countingReader struct {
	r        io.ReadCloser
	n        atomic.Uint64
	limit    uint64
	over     error // what a read past limit returns; nil is errBodyTooLarge
	exceeded atomic.Bool
	// failed is set when a read failed other than at the end (or the
	// limit): the side read from broke.
	failed atomic.Bool
}

func (c *countingReader) Read(b []byte) (int, error) {
	if c.limit > 0 {
		left := c.limit - c.n.Load()
		// One byte more than allowed is read to tell "exactly the limit"
		// from "over it"; it is never passed on.
		if uint64(len(b)) > left+1 {
			b = b[:left+1]
		}
	}
	n, err := c.r.Read(b)
	if err != nil && err != io.EOF {
		c.failed.Store(true)
	}
	if c.limit > 0 && c.n.Load()+uint64(n) > c.limit {
		c.exceeded.Store(true)
		n = int(c.limit - c.n.Load())
		c.n.Add(uint64(n))
		if c.over != nil {
			return n, c.over
		}
		return n, errBodyTooLarge
	}
	c.n.Add(uint64(n))
	return n, err
}

// retryAfter is the Retry-After header of a refusal by a rate, or "".
func retryAfter(v verdict) string {
	if v.retryAfter == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(v.retryAfter), 10)
}

// responseTooLarge is the 403 body for a response declaring more bytes
// than the execution has left to receive.
func responseTooLarge(c *checked, v verdict, size int64) []byte {
	return blockBody(c, verdict{rule: "limits.max_total_response_bytes", code: policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED,
		reason: fmt.Sprintf("response body of %d bytes is above the %d bytes left of the execution's max_total_response_bytes", size, v.maxResponse)})
}

// tooLargeBody is the 413 body for a request whose body grew past the
// limit.
func tooLargeBody(c *checked, v verdict) []byte {
	return blockBody(c, verdict{rule: "limits.max_request_bytes", code: policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED,
		reason: fmt.Sprintf("request body larger than %d bytes (the policy's max_request_bytes, or what was left of its max_total_request_bytes)", v.maxBody)})
}

func (c *countingReader) Close() error { return c.r.Close() }

// upstreamRequest rebuilds the checked request for the upstream: the
// checked scheme, host and normalized path and query, the sandbox's
// headers minus hop-by-hop and method- or path-override ones, and its body.
func (p *Proxy) upstreamRequest(ctx context.Context, c *checked, r *http.Request, body io.ReadCloser) *http.Request {
	decoded, err := url.PathUnescape(c.path)
	if err != nil {
		decoded = c.path // cannot happen for a normalized path
	}
	u := &url.URL{Scheme: c.scheme, Host: c.authority, Path: decoded, RawPath: c.path, RawQuery: c.query}
	h := r.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	te := h.Get("Te")
	removeHopHeaders(h)
	removeOverrideHeaders(h)
	h.Del("Host")
	h.Del("Expect")
	if strings.EqualFold(strings.TrimSpace(te), "trailers") {
		h.Set("Te", "trailers")
	}
	if c.websocket {
		h.Set("Connection", "Upgrade")
		h.Set("Upgrade", "websocket")
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // keep net/http from adding its own
	}
	out := (&http.Request{
		Method:        c.method,
		URL:           u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Host:          c.authority,
		ContentLength: r.ContentLength,
	}).WithContext(ctx)
	if r.ContentLength != 0 && body != nil {
		out.Body = body
	}
	return out
}

// outcome reports what an allowed request to c's host led to. The
// report says why it failed in fixed words (outcomeError); the error
// itself, which can name resolved internal addresses, goes to the
// proxy's log only.
func (p *Proxy) outcome(c *checked, v verdict, status int, sent, received uint64, err error) {
	d := time.Since(v.at)
	p.cfg.Metrics.upstreamDone(d)
	text, class := outcomeError(err)
	if class != "" {
		p.log.Warn("upstream failed", "host", c.host, "class", class, "error", err)
	}
	o := decide.Outcome{QuestionID: v.id, StatusCode: status, BytesSent: sent, BytesReceived: received, Duration: d, Error: text}
	p.cfg.Decider.ReportOutcome(o)
}

// sideOf marks err, which ended an exchange whose request body was read
// through sent and response body through recv, as the sandbox's doing
// when neither the upstream's side failed nor a limit was hit: a write to
// the sandbox failed, or reading its body did.
func sideOf(err error, sent, recv *countingReader) error {
	switch {
	case err == nil, errors.Is(err, errBodyTooLarge), errors.Is(err, errResponseTooLarge):
		return err
	case sent != nil && sent.failed.Load(), recv != nil && !recv.failed.Load():
		return fmt.Errorf("%w: %w", errSandboxClosed, err)
	}
	return err
}
