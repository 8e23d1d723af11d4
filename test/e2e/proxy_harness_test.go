package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

var (
	proxyBuildOnce sync.Once
	proxyBin       string
	proxyBuildErr  error
)

// proxyBinary builds the egress proxy once per test run.
func proxyBinary(t testing.TB) string {
	t.Helper()
	proxyBuildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sandpit-proxy-bin-")
		if err != nil {
			proxyBuildErr = err
			return
		}
		proxyBin = filepath.Join(dir, "sandpit-egress-proxy")
		cmd := exec.Command("go", "build", "-o", proxyBin, "./cmd/sandpit-egress-proxy")
		cmd.Dir = "../../services/egressproxy"
		if out, err := cmd.CombinedOutput(); err != nil {
			proxyBuildErr = fmt.Errorf("go build proxy: %v\n%s", err, out)
		}
	})
	if proxyBuildErr != nil {
		t.Fatal(proxyBuildErr)
	}
	return proxyBin
}

// standIn is a local upstream playing a public host. It records every
// request that reaches it.
type standIn struct {
	host string
	srv  *httptest.Server
	hits atomic.Int32
	mu   sync.Mutex
	seen []string
}

func (s *standIn) addr() string { return s.srv.Listener.Addr().String() }

func (s *standIn) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// newStandIn starts an HTTPS (HTTP/2 capable) stand-in on loopback that
// answers every request with a small JSON body naming itself.
func newStandIn(t testing.TB, host string) *standIn {
	t.Helper()
	s := &standIn{host: host}
	echo := websocket.Server{
		Handshake: func(*websocket.Config, *http.Request) error { return nil },
		Handler:   func(ws *websocket.Conn) { _, _ = io.Copy(ws, ws) },
	}
	s.srv = serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "websocket" {
			s.hits.Add(1)
			s.mu.Lock()
			s.seen = append(s.seen, "WEBSOCKET "+r.Host+" "+r.URL.RequestURI())
			s.mu.Unlock()
			echo.ServeHTTP(w, r)
			return
		}
		s.hits.Add(1)
		n, _ := io.Copy(io.Discard, r.Body)
		s.mu.Lock()
		s.seen = append(s.seen, fmt.Sprintf("%s %s %s auth=%s body=%d", r.Method, r.Host, r.URL.RequestURI(), r.Header.Get("Authorization"), n))
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"stand_in":%q,"path":%q,"proto":%q}`, host, r.URL.Path, r.Proto)
	}))
	return s
}

// serveTLS serves h over HTTPS (HTTP/2 capable) on loopback with the
// stand-ins' certificate until the test ends.
func serveTLS(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{upstreamCert(t)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// standInHosts are the names every stand-in's certificate is valid for:
// the proxy verifies upstream certificates against the request's host.
var standInHosts = []string{"api.stripe.com", "pay.test", "api.github.test", "forbidden.test"}

var (
	upstreamCAOnce sync.Once
	upstreamCA     *x509.Certificate
	upstreamLeaf   tls.Certificate
	upstreamErr    error
)

// upstreamCert is a leaf for standInHosts (and the metadata address) from a
// CA made for this test run; upstreamCAPEM writes that CA for --upstream-ca.
func upstreamCert(t testing.TB) tls.Certificate {
	t.Helper()
	upstreamCAOnce.Do(func() {
		caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			upstreamErr = err
			return
		}
		caTmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sandpit e2e upstream CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
		if err != nil {
			upstreamErr = err
			return
		}
		upstreamCA, _ = x509.ParseCertificate(caDER)
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			upstreamErr = err
			return
		}
		leafTmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "stand-in"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			DNSNames: standInHosts, IPAddresses: []net.IP{net.ParseIP("169.254.169.254"), net.ParseIP("127.0.0.1")},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, leafTmpl, upstreamCA, &key.PublicKey, caKey)
		if err != nil {
			upstreamErr = err
			return
		}
		upstreamLeaf = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	})
	if upstreamErr != nil {
		t.Fatal(upstreamErr)
	}
	return upstreamLeaf
}

// upstreamCAPEM writes the stand-ins' CA for the proxy's --upstream-ca.
func upstreamCAPEM(t testing.TB) string {
	t.Helper()
	upstreamCert(t)
	p := filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: upstreamCA.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// egressProxy is the proxy binary running for a test.
type egressProxy struct {
	cmd   *exec.Cmd
	ports netPorts
	logs  *lockedBuffer
	done  chan struct{}
}

// startProxy runs the proxy with the executor at decider. Upstreams maps
// host names to stand-in addresses; every upstream dial is confined to
// loopback.
func startProxy(t testing.TB, ports netPorts, decider string, upstreams map[string]string, upstreamCA string, extra ...string) *egressProxy {
	t.Helper()
	p := &egressProxy{ports: ports, logs: &lockedBuffer{}, done: make(chan struct{})}
	args := []string{
		"--listen", fmt.Sprintf("0.0.0.0:%d", ports.proxyPort),
		"--dns-listen", fmt.Sprintf("0.0.0.0:%d", ports.dnsPort),
		"--grpc-listen", ports.proxyGRPC,
		"--metrics-listen", "",
		"--decider", decider,
		"--upstream-allow", "127.0.0.0/8",
		"--ca-dir", t.TempDir(),
		// Several tests flood one sandbox's HTTP on purpose, to attack
		// other bounds (result size, oversized requests); the per-source
		// HTTP limits are off for them. fairness_test.go turns them back
		// on at their defaults (fairLimits).
		"--http-rate", "0", "--http-in-flight", "0",
	}
	if upstreamCA != "" {
		args = append(args, "--upstream-ca", upstreamCA)
	}
	for h, a := range upstreams {
		args = append(args, "--upstream", h+"="+a)
	}
	args = append(args, extra...)
	p.cmd = exec.Command(proxyBinary(t), args...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("proxy log:\n%s", p.logs.String())
		}
	})
	waitServing(t, "proxy", ports.proxyGRPC, "", p.done, p.logs)
	return p
}

func (p *egressProxy) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// countingListener counts connections accepted from outside loopback: a
// sandbox reaching a host service would show up here.
type countingListener struct {
	net.Listener
	foreign atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
			l.foreign.Add(1)
		}
	}
	return c, err
}

// waitProxy waits up to 10 s for p to open its decision stream to e.
func (e *executor) waitProxy(t testing.TB, p *egressProxy) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !e.app.ProxyConnected(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the proxy did not open a decision stream\n%s", p.logs.String())
		}
	}
}
