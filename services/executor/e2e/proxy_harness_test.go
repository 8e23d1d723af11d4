package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

var (
	proxyBuildOnce sync.Once
	proxyBin       string
	proxyBuildErr  error
)

// proxyBinary builds the egress proxy once per test run.
func proxyBinary(t *testing.T) string {
	t.Helper()
	proxyBuildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sandpit-proxy-bin-")
		if err != nil {
			proxyBuildErr = err
			return
		}
		proxyBin = filepath.Join(dir, "sandpit-egress-proxy")
		cmd := exec.Command("go", "build", "-o", proxyBin, "./cmd/sandpit-egress-proxy")
		cmd.Dir = "../../egressproxy"
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
func newStandIn(t *testing.T, host string) *standIn {
	t.Helper()
	s := &standIn{host: host}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		s.seen = append(s.seen, r.Method+" "+r.Host+" "+r.URL.RequestURI()+" auth="+r.Header.Get("Authorization"))
		s.mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"stand_in":%q,"path":%q,"proto":%q}`, host, r.URL.Path, r.Proto)
	}))
	s.srv.EnableHTTP2 = true
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

// certPEM writes the stand-ins' certificates as one bundle for --upstream-ca.
func certPEM(t *testing.T, certs ...*x509.Certificate) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "upstream-ca.pem")
	var b strings.Builder
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// presentedCert fetches the certificate a TLS server on loopback presents.
func presentedCert(t *testing.T, addr string) *x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
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
func startProxy(t *testing.T, ports netPorts, decider string, upstreams map[string]string, upstreamCA string, extra ...string) *egressProxy {
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
	conn, err := grpc.NewClient(ports.proxyGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("proxy exited: %s", p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy not serving after 30s: %v\n%s", err, p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
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
