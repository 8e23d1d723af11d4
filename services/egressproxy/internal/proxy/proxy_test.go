package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/prototext"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decidetest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dialer"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/mitm"
	"github.com/sandpit-run/sandpit/services/policy"
)

const secret = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"

var testHello = decide.Hello{
	Version:            "test",
	CACertPEM:          []byte("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"),
	TransparentAddress: "127.0.0.1:15001",
	DNSAddress:         "127.0.0.1:15053",
}

// standIn is a local upstream that records what reached it.
type standIn struct {
	mu      sync.Mutex
	seen    []string
	headers []http.Header
}

func (s *standIn) record(r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, fmt.Sprintf("%s %s %s %s auth=%s", r.Proto, r.Method, r.Host, r.URL.RequestURI(), r.Header.Get("Authorization")))
	s.headers = append(s.headers, r.Header.Clone())
}

func (s *standIn) requestHeaders() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.headers...)
}

func (s *standIn) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

func (s *standIn) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.record(r)
		switch r.URL.Path {
		case "/redirect":
			http.Redirect(w, r, "https://elsewhere.test/", http.StatusFound)
		case "/echo-auth":
			// Reflects the credentials, as some APIs do in errors.
			w.Header().Set("X-Echo", r.Header.Get("Authorization"))
			fmt.Fprintf(w, `{"auth":%q}`, r.Header.Get("Authorization"))
		case "/stream":
			// 100 bytes without a Content-Length, in two flushes.
			io.WriteString(w, strings.Repeat("s", 40))
			w.(http.Flusher).Flush()
			io.WriteString(w, strings.Repeat("s", 60))
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"object":"list","proto":%q}`, r.Proto)
		}
	})
}

type env struct {
	tlsAddr, plainAddr string
	proxyCA            *x509.CertPool
	upstream, plain    *standIn
	decider            *decidetest.Server
	client             *decide.Client
	// metrics is the registry of the proxy's and its decide client's
	// metrics.
	metrics *prometheus.Registry
	minter  *mitm.Minter
	proxy   *Proxy
}

// setup starts, all on loopback: a TLS stand-in for api.stripe.test and a
// plain one for plain.test (reached through overrides, inside a
// 127.0.0.0/8 allowlist), a fake decider, and the proxy on two listeners
// whose injected original destinations are ports 443 and 80 of a
// documentation address that is never dialed.
func setup(t *testing.T) *env {
	t.Helper()
	return setupWithLog(t, slog.DiscardHandler)
}

// setupWithLog is setup with the proxy and its decide client logging to h,
// and its configuration changed by opts.
func setupWithLog(t *testing.T, h slog.Handler, opts ...func(*Config)) *env {
	t.Helper()
	e := &env{upstream: &standIn{}, plain: &standIn{}, metrics: prometheus.NewRegistry()}

	upCA, err := mitm.NewCA("upstream test CA")
	if err != nil {
		t.Fatal(err)
	}
	upCert, err := mitm.NewMinter(upCA, 4).Certificate("api.stripe.test")
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewUnstartedServer(e.upstream.handler())
	up.TLS = &tls.Config{Certificates: []tls.Certificate{*upCert}}
	up.EnableHTTP2 = true
	up.StartTLS()
	t.Cleanup(up.Close)
	plain := httptest.NewServer(e.plain.handler())
	t.Cleanup(plain.Close)

	e.decider = decidetest.Start(t, decidetest.StripeLike)
	conn, err := grpc.NewClient(e.decider.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	log := slog.New(h)
	e.client, err = decide.New(conn, decide.Config{Hello: testHello, Timeout: 2 * time.Second, Metrics: decide.NewMetrics(e.metrics), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { e.client.Run(ctx) })

	d := dialer.New(dialer.Config{
		Resolver: failingResolver{},
		Overrides: map[string]string{
			"api.stripe.test": up.Listener.Addr().String(),
			"plain.test":      plain.Listener.Addr().String(),
		},
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	roots := x509.NewCertPool()
	roots.AddCert(upCA.Cert)
	tr := NewTransport(d.DialContext, roots)
	t.Cleanup(tr.CloseIdleConnections)

	ca, err := mitm.NewCA("proxy test CA")
	if err != nil {
		t.Fatal(err)
	}
	e.proxyCA = x509.NewCertPool()
	e.proxyCA.AddCert(ca.Cert)

	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.tlsAddr, e.plainAddr = tlsLn.Addr().String(), plainLn.Addr().String()
	e.minter = mitm.NewMinter(ca, 16)
	cfg := Config{
		Minter:   e.minter,
		Decider:  e.client,
		Upstream: tr,
		OriginalDst: func(c net.Conn) (netip.AddrPort, error) {
			if c.LocalAddr().String() == e.plainAddr {
				return netip.MustParseAddrPort("203.0.113.10:80"), nil
			}
			return netip.MustParseAddrPort("203.0.113.10:443"), nil
		},
		Metrics: NewMetrics(e.metrics),
		Log:     log,
	}
	for _, o := range opts {
		o(&cfg)
	}
	p := New(cfg)
	e.proxy = p
	wg.Go(func() { _ = p.Serve(ctx, tlsLn) })
	wg.Go(func() { _ = p.Serve(ctx, plainLn) })

	deadline := time.Now().Add(5 * time.Second)
	for !e.client.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("decide stream never opened")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return e
}

type failingResolver struct{}

func (failingResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	return nil, fmt.Errorf("test resolver: %s has no override", host)
}

// h1Client connects to the proxy as if it were sni, over HTTP/1.1.
func (e *env) h1Client(sni string) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&tls.Dialer{Config: &tls.Config{ServerName: sni, RootCAs: e.proxyCA, NextProtos: []string{"http/1.1"}}}).DialContext(ctx, "tcp", e.tlsAddr)
			},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", e.plainAddr)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// h2Client connects to the proxy as if it were sni, over HTTP/2.
func (e *env) h2Client(sni string) *http.Client {
	return &http.Client{Transport: &http2.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			return (&tls.Dialer{Config: &tls.Config{ServerName: sni, RootCAs: e.proxyCA, NextProtos: []string{"h2"}}}).DialContext(ctx, "tcp", e.tlsAddr)
		},
	}}
}

// raw sends bytes over a TLS connection made for sni and reads one
// response.
func (e *env) raw(t *testing.T, sni, request string) *http.Response {
	t.Helper()
	c, err := tls.Dial("tcp", e.tlsAddr, &tls.Config{ServerName: sni, RootCAs: e.proxyCA, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

type blocked struct {
	Decision, Rule, Reason, Host, Method, Path string
}

func expectBlocked(t *testing.T, resp *http.Response, reasonPart string) blocked {
	t.Helper()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d (%s), want 403", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	var b blocked
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
		t.Fatal(err)
	}
	if b.Decision != "blocked" || !strings.Contains(b.Reason, reasonPart) {
		t.Fatalf("body %+v, want blocked with reason containing %q", b, reasonPart)
	}
	return b
}

func get(t *testing.T, c *http.Client, method, url string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestAllowedGETForwarded(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		t.Run(proto, func(t *testing.T) {
			e := setup(t)
			c := e.h1Client("api.stripe.test")
			if proto == "HTTP/2" {
				c = e.h2Client("api.stripe.test")
			}
			resp := get(t, c, "GET", "https://api.stripe.test/v1//products/./?limit=3&api_key=zzz", map[string]string{"Authorization": "Bearer " + secret})
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Proto, proto) || !strings.Contains(string(body), `"object":"list"`) {
				t.Fatalf("got %d %s %s", resp.StatusCode, resp.Proto, body)
			}
			// Upstream speaks HTTP/2 to the proxy when it offers it, and
			// sees exactly the checked request.
			want := "HTTP/2.0 GET api.stripe.test /v1/products/?limit=3&api_key=zzz auth=Bearer " + secret
			if got := e.upstream.requests(); len(got) != 1 || got[0] != want {
				t.Fatalf("upstream saw %q, want %q", got, want)
			}
			q := e.decider.WaitFor(t, "the request", func(r *egressv1.DecideRequest) bool { return r.GetQuestion().GetHttp() != nil }).GetQuestion().GetHttp()
			if q.GetHost() != "api.stripe.test" || q.GetPath() != "/v1/products/" || q.GetScheme() != "https" || q.GetPort() != 443 || q.GetProtocol() != proto {
				t.Fatalf("decider got %v", q)
			}
			if strings.Contains(q.GetQuery(), "zzz") || !strings.Contains(q.GetQuery(), "limit=3") {
				t.Fatalf("query not redacted: %q", q.GetQuery())
			}
			o := e.decider.WaitFor(t, "the outcome", func(r *egressv1.DecideRequest) bool { return r.GetReport().GetOutcome() != nil }).GetReport().GetOutcome()
			if o.GetStatusCode() != 200 || o.GetBytesReceived() != uint64(len(body)) || o.GetError() != "" {
				t.Fatalf("outcome %v, body %d bytes", o, len(body))
			}
			assertNoSecret(t, e)
		})
	}
}

// assertNoSecret checks the Authorization value never reached the
// decider, in any form: no header is ever sent.
func assertNoSecret(t *testing.T, e *env) {
	t.Helper()
	for _, r := range e.decider.Received() {
		text := prototext.Format(r)
		if strings.Contains(text, secret) || strings.Contains(text, "sk_test") || strings.Contains(text, "Bearer") {
			t.Fatalf("secret reached the decider: %s", text)
		}
	}
}

func TestDeniedPOSTBlocked(t *testing.T) {
	e := setup(t)
	resp := get(t, e.h1Client("api.stripe.test"), "POST", "https://api.stripe.test/v1/charges", map[string]string{"Authorization": "Bearer " + secret})
	b := expectBlocked(t, resp, "charges are not allowed")
	if b.Rule != "hosts[0].rules[1]" || b.Host != "api.stripe.test" || b.Method != "POST" || b.Path != "/v1/charges" {
		t.Fatalf("body %+v", b)
	}
	if got := e.upstream.requests(); len(got) != 0 {
		t.Fatalf("upstream saw %q", got)
	}
	assertNoSecret(t, e)
}

func TestHostDiffersFromSNIBlocked(t *testing.T) {
	e := setup(t)
	expectBlocked(t, e.raw(t, "api.stripe.test", "GET /v1/products HTTP/1.1\r\nHost: evil.test\r\n\r\n"), "TLS server name")
	// Keep-alive: a first allowed request does not vouch for the next.
	c, err := tls.Dial("tcp", e.tlsAddr, &tls.Config{ServerName: "api.stripe.test", RootCAs: e.proxyCA})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /v1/products HTTP/1.1\r\nHost: api.stripe.test\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	io.WriteString(c, "GET /v1/products HTTP/1.1\r\nHost: evil.test\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	expectBlocked(t, resp, "TLS server name")
	if got := e.upstream.requests(); len(got) != 1 {
		t.Fatalf("upstream saw %q, want only the first request", got)
	}
	v := e.decider.WaitFor(t, "a violation", func(r *egressv1.DecideRequest) bool { return r.GetQuestion().GetHttp().GetViolation() != "" })
	if v.GetQuestion().GetHttp().GetHost() != "evil.test" {
		t.Fatalf("violation reported for %q", v.GetQuestion().GetHttp().GetHost())
	}
}

func TestAbsoluteFormOtherHostBlocked(t *testing.T) {
	e := setup(t)
	expectBlocked(t, e.raw(t, "api.stripe.test", "GET https://evil.test/v1/products HTTP/1.1\r\nHost: api.stripe.test\r\n\r\n"), "")
	expectBlocked(t, e.raw(t, "api.stripe.test", "GET https://api.stripe.test/v1/products HTTP/1.1\r\nHost: evil.test\r\n\r\n"), "Host header")
	expectBlocked(t, e.raw(t, "api.stripe.test", "GET http://api.stripe.test/v1/products HTTP/1.1\r\nHost: api.stripe.test\r\n\r\n"), "scheme")
	// Plain HTTP: absolute-form target and Host must agree too.
	pc, err := net.Dial("tcp", e.plainAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	io.WriteString(pc, "GET http://evil.test/v1/products HTTP/1.1\r\nHost: plain.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(pc), nil)
	if err != nil {
		t.Fatal(err)
	}
	expectBlocked(t, resp, "Host header")
	if got := e.upstream.requests(); len(got) != 0 {
		t.Fatalf("upstream saw %q", got)
	}
	if got := e.plain.requests(); len(got) != 0 {
		t.Fatalf("plain upstream saw %q", got)
	}
}

func TestH2AuthorityDiffersFromSNIBlocked(t *testing.T) {
	e := setup(t)
	c := e.h2Client("api.stripe.test")
	resp := get(t, c, "GET", "https://evil.test/v1/products", nil)
	if resp.Proto != "HTTP/2.0" {
		t.Fatalf("proto %s", resp.Proto)
	}
	expectBlocked(t, resp, "TLS server name")
	// Same connection, right authority: allowed.
	resp = get(t, c, "GET", "https://api.stripe.test/v1/products", nil)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := e.upstream.requests(); len(got) != 1 {
		t.Fatalf("upstream saw %q", got)
	}
}

func TestAmbiguousPathBlocked(t *testing.T) {
	e := setup(t)
	for _, path := range []string{
		"/v1/products%2F..%2Fcharges", "/v1/products/%2e%2e/charges", "/v1/products/..%5Ccharges",
		"/v1/products/%zz", "/v1/products\\..\\charges", "/v1/products/%00",
	} {
		expectBlocked(t, e.raw(t, "api.stripe.test", "GET "+path+" HTTP/1.1\r\nHost: api.stripe.test\r\n\r\n"), "ambiguous path")
	}
	// Traversal that normalizes cleanly is decided on its normal form.
	expectBlocked(t, e.raw(t, "api.stripe.test", "GET /v1/products/../charges HTTP/1.1\r\nHost: api.stripe.test\r\n\r\n"), "charges are not allowed")
	if got := e.upstream.requests(); len(got) != 0 {
		t.Fatalf("upstream saw %q", got)
	}
}

// TestDeciderGoneBlocks: a request on a connection opened while the
// decider was there is denied once it is gone (a new connection is refused
// at the handshake: TestServerNameGateFailsClosed).
func TestDeciderGoneBlocks(t *testing.T) {
	e := setup(t)
	c := e.h1Client("api.stripe.test")
	resp := get(t, c, "GET", "https://api.stripe.test/v1/products", nil)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	e.decider.Stop()
	deadline := time.Now().Add(5 * time.Second)
	for e.client.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("client still connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp = get(t, c, "GET", "https://api.stripe.test/v1/products", nil)
	if b := expectRefused(t, resp, http.StatusForbidden, "decision_unavailable"); !strings.HasPrefix(b.Reason, "policy decision unavailable") {
		t.Errorf("reason %q", b.Reason)
	}
	if got := e.upstream.requests(); len(got) != 1 {
		t.Fatalf("upstream saw %q", got)
	}
}

func TestRedirectPassedBack(t *testing.T) {
	e := setup(t)
	resp := get(t, e.h1Client("api.stripe.test"), "GET", "https://api.stripe.test/redirect", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://elsewhere.test/" {
		t.Fatalf("got %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if got := e.upstream.requests(); len(got) != 1 {
		t.Fatalf("upstream saw %q", got)
	}
}

func TestPlainHTTPForwarded(t *testing.T) {
	e := setup(t)
	resp := get(t, e.h1Client(""), "GET", "http://plain.test/v1/products", nil)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
	if got := e.plain.requests(); len(got) != 1 || got[0] != "HTTP/1.1 GET plain.test:80 /v1/products auth=" {
		// The destination port 80 is the scheme default: no port in Host.
		if len(got) != 1 || got[0] != "HTTP/1.1 GET plain.test /v1/products auth=" {
			t.Fatalf("plain upstream saw %q", got)
		}
	}
	expectBlocked(t, get(t, e.h1Client(""), "POST", "http://plain.test/v1/products", nil), "charges")
}

func TestH2CUpgradeRefused(t *testing.T) {
	e := setup(t)
	pc, err := net.Dial("tcp", e.plainAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	io.WriteString(pc, "GET /v1/products HTTP/1.1\r\nHost: plain.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(pc), nil)
	if err != nil {
		t.Fatal(err)
	}
	expectBlocked(t, resp, "h2c")
}

func TestNonHTTPRefusedAndReported(t *testing.T) {
	e := setup(t)
	for _, payload := range []string{"\x00\x01\x02garbage", "SSH-2.0-OpenSSH_9.6\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"} {
		c, err := net.Dial("tcp", e.plainAddr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, payload)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
			t.Fatalf("%q: connection not closed (%d, %v)", payload, n, err)
		}
		c.Close()
	}
	r := e.decider.WaitFor(t, "a not-HTTP refusal", func(r *egressv1.DecideRequest) bool {
		return r.GetReport().GetRefusal().GetReason() == "not HTTP or TLS"
	}).GetReport().GetRefusal()
	if r.GetDestination() != "203.0.113.10:80" || r.GetSourceIp() != "127.0.0.1" {
		t.Fatalf("refusal %v", r)
	}
	e.decider.WaitFor(t, "an h2c refusal", func(r *egressv1.DecideRequest) bool {
		return strings.Contains(r.GetReport().GetRefusal().GetReason(), "h2c")
	})
}

func TestTLSWithoutSNIRefusedAndReported(t *testing.T) {
	e := setup(t)
	c, err := tls.Dial("tcp", e.tlsAddr, &tls.Config{InsecureSkipVerify: true}) // no ServerName: no SNI
	if err == nil {
		c.Close()
		t.Fatal("handshake without SNI succeeded")
	}
	r := e.decider.WaitFor(t, "a no-SNI refusal", func(r *egressv1.DecideRequest) bool {
		return r.GetReport().GetRefusal().GetReason() == "TLS without SNI"
	}).GetReport().GetRefusal()
	if r.GetDestination() != "203.0.113.10:443" {
		t.Fatalf("refusal %v", r)
	}
}

// TestOversizedRefusedAndReported sends requests over the header and
// target bounds, over HTTP/1.1 and HTTP/2: each is answered 431 or 414 by
// the proxy with the refusal body, reported to the decider as a blocked
// request with its status, never forwarded; the decide stream and, for
// HTTP/2, the connection carry on.
func TestOversizedRefusedAndReported(t *testing.T) {
	bigCookie := "session=" + strings.Repeat("c", 100<<10)
	bigQuery := "/v1/products?q=" + strings.Repeat("q", 100<<10)
	tests := []struct {
		name, proto, path, cookie string
		raw                       string // an HTTP/1.1 request written as is
		status                    int
		code                      string
	}{
		{name: "h1 cookie", proto: "HTTP/1.1", path: "/v1/products", cookie: bigCookie, status: 431, code: "ambiguous_request"},
		{name: "h1 query", proto: "HTTP/1.1", path: bigQuery, status: 414, code: "ambiguous_request"},
		{name: "h1 target within the head bound", proto: "HTTP/1.1", raw: "GET /v1/products?q=" + strings.Repeat("q", 9<<10) + " HTTP/1.1\r\nHost: api.stripe.test\r\n\r\n", status: 414, code: "ambiguous_request"},
		{name: "h1 request line past the head bound", proto: "HTTP/1.1", raw: "GET /v1/products?q=" + strings.Repeat("q", 70<<10) + " HTTP/1.1\r\nHost: api.stripe.test\r\n\r\n", status: 414, code: "ambiguous_request"},
		{name: "h2 cookie", proto: "HTTP/2", path: "/v1/products", cookie: bigCookie, status: 431, code: "ambiguous_request"},
		{name: "h2 query", proto: "HTTP/2", path: bigQuery, status: 414, code: "ambiguous_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t)
			var resp *http.Response
			c := e.h1Client("api.stripe.test")
			if tt.proto == "HTTP/2" {
				c = e.h2Client("api.stripe.test")
			}
			if tt.raw != "" {
				resp = e.raw(t, "api.stripe.test", tt.raw)
			} else {
				hdr := map[string]string{}
				if tt.cookie != "" {
					hdr["Cookie"] = tt.cookie
				}
				resp = get(t, c, "GET", "https://api.stripe.test"+tt.path, hdr)
			}
			b := expectRefused(t, resp, tt.status, tt.code)
			if b.Rule != "proxy" || b.Host != "api.stripe.test" || b.Method != "GET" || !strings.HasPrefix(b.Path, "/v1/products") || len(b.Path) > 2<<10 {
				t.Errorf("body %+v", b)
			}
			q := e.decider.WaitFor(t, "the oversized request", func(r *egressv1.DecideRequest) bool {
				return r.GetQuestion().GetHttp().GetViolationStatus() != 0
			}).GetQuestion().GetHttp()
			if q.GetViolationStatus() != uint32(tt.status) || !strings.Contains(q.GetViolation(), "over the proxy's limit") ||
				q.GetQuery() != "" || q.GetProtocol() != tt.proto || q.GetHost() != "api.stripe.test" {
				t.Errorf("reported %v", q)
			}
			if got := e.upstream.requests(); len(got) != 0 {
				t.Errorf("upstream saw %d requests", len(got))
			}
			if tt.proto == "HTTP/2" {
				// Same connection, a request within the bounds.
				resp := get(t, c, "GET", "https://api.stripe.test/v1/products", nil)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Errorf("next request on the connection: %d", resp.StatusCode)
				}
			}
			if n := e.decider.Streams(); n != 1 || !e.client.Connected() {
				t.Errorf("%d decide streams, connected %v; want the one stream still up", n, e.client.Connected())
			}
		})
	}
}

// TestBoundsAreInclusive sends a target and a head exactly at their
// bounds: both are decided and forwarded as usual.
func TestBoundsAreInclusive(t *testing.T) {
	e := setup(t)
	target := "/v1/products?q="
	target += strings.Repeat("q", MaxTargetBytes-len(target))
	head := "GET " + target + " HTTP/1.1\r\nHost: api.stripe.test\r\nX-Pad: \r\n\r\n"
	pad := strings.Repeat("p", MaxHeaderBytes-len(head))
	head = strings.Replace(head, "X-Pad: ", "X-Pad: "+pad, 1)
	if len(head) != MaxHeaderBytes {
		t.Fatalf("head of %d bytes", len(head))
	}
	resp := e.raw(t, "api.stripe.test", head)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("a request at both bounds: %d", resp.StatusCode)
	}
}

type refusalBody struct {
	Decision, Rule, Reason, Hint, Host, Method, Path string
	RuleID                                           string `json:"rule_id"`
	Error                                            struct {
		Type, Code, Message, Hint, Host, Method, Path string
		RuleID                                        string `json:"rule_id"`
	}
}

func expectRefused(t *testing.T, resp *http.Response, status int, code string) refusalBody {
	t.Helper()
	defer resp.Body.Close()
	var b refusalBody
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
		t.Fatalf("status %d, body: %v", resp.StatusCode, err)
	}
	if resp.StatusCode != status || resp.Header.Get("Content-Type") != "application/json" || b.Decision != "blocked" ||
		b.Error.Code != code || b.Hint == "" || b.Reason == "" {
		t.Fatalf("status %d, body %+v; want %d with code %s", resp.StatusCode, b, status, code)
	}
	// The error member carries what the top level does, for SDKs that
	// keep only it.
	e := b.Error
	if e.Type != policy.DenialType || e.Message == "" || e.RuleID != b.Rule || b.RuleID != b.Rule || e.Hint != b.Hint ||
		e.Host != b.Host || e.Method != b.Method || e.Path != b.Path {
		t.Fatalf("body %+v: the error member differs from the top level", b)
	}
	return b
}

// TestMetrics makes requests the policy allows and denies, over HTTP/1.1
// and HTTP/2, and a connection that is not HTTP: each is counted once,
// with label values from the shared vocabulary.
func TestMetrics(t *testing.T) {
	e := setup(t)
	for _, c := range []*http.Client{e.h1Client("api.stripe.test"), e.h2Client("api.stripe.test")} {
		resp := get(t, c, "GET", "https://api.stripe.test/v1/products", nil)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	expectBlocked(t, get(t, e.h1Client("api.stripe.test"), "POST", "https://api.stripe.test/v1/charges", nil), "charges")
	c, err := net.Dial("tcp", e.plainAddr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Read(make([]byte, 1))
	c.Close()
	e.decider.WaitFor(t, "the refusal", func(r *egressv1.DecideRequest) bool { return r.GetReport().GetRefusal() != nil })

	requests := func(decision, protocol string) float64 {
		return metricstest.Value(t, e.metrics, "sandpit_egress_requests_total", map[string]string{"decision": decision, "protocol": protocol})
	}
	tests := []struct {
		decision, protocol string
		want               float64
	}{
		{"allow", "http/1.1", 1},
		{"allow", "http/2", 1},
		{"deny", "http/1.1", 1},
		{"deny", "http/2", 0},
		{"would_block", "http/1.1", 0},
	}
	for _, tt := range tests {
		if got := requests(tt.decision, tt.protocol); got != tt.want {
			t.Errorf("requests{decision=%q,protocol=%q} = %v, want %v", tt.decision, tt.protocol, got, tt.want)
		}
	}
	if got := metricstest.Value(t, e.metrics, "sandpit_egress_connections_refused_total", map[string]string{"reason": "not_http_or_tls"}); got != 1 {
		t.Errorf("%v refusals as not_http_or_tls, want 1", got)
	}
	if got := metricstest.Value(t, e.metrics, "sandpit_egress_decision_duration_seconds", map[string]string{"kind": "http"}); got != 3 {
		t.Errorf("%v decisions timed, want 3", got)
	}
	// The outcome is reported once the response has ended, which the
	// client may see first.
	deadline := time.Now().Add(5 * time.Second)
	for metricstest.Value(t, e.metrics, "sandpit_egress_upstream_duration_seconds", nil) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the two forwarded requests were not timed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	metricstest.CheckLabel(t, e.metrics, "decision", metricstest.Decisions)
	metricstest.CheckLabel(t, e.metrics, "protocol", []string{"http/1.1", "http/2"})
	metricstest.CheckLabel(t, e.metrics, "reason", []string{refusedNoOriginalDst, refusedH2CPrior, refusedNotHTTP,
		refusedBadClientHello, refusedNoSNI, refusedInvalidSNI, refusedHandshakeFailed, refusedTooManyConns,
		refusedSNINotAllowed, refusedSNIUndecided, refusedMintRate})
	// The proxy's per-source bound (this package) and the decide client's
	// rate and in-flight limits share the label.
	metricstest.CheckLabel(t, e.metrics, "limit", []string{limitConnections, "rate", "in_flight"})
}
