package decisionlisten

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sandpit-run/sandpit/services/daemon/tlstest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve serves gRPC health on l until the test ends; a health check stands
// in for the Decide stream: both need the connection admitted.
func serve(t *testing.T, l *Listener) {
	t.Helper()
	srv := grpc.NewServer(l.ServerOptions...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Stop(); <-done })
}

// check dials target and asks for health within a few seconds.
func check(t *testing.T, target string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func refused(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no refusal series for %s", reason)
	return 0
}

// TestUnixSocketIsTheProxysAlone: the socket is 0600 and owned by the
// proxy's uid, the proxy's uid is admitted, and target is what a proxy
// dials.
func TestUnixSocketIsTheProxysAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decision.sock")
	reg := prometheus.NewRegistry()
	uid := uint32(os.Getuid())
	l, err := Listen(Config{Address: "unix://" + path, ProxyUID: uid}, reg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, l)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != uid {
		t.Errorf("socket mode %v owner %d, want 0600 and the proxy's uid %d", fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Uid, uid)
	}
	if l.Target() != "unix://"+path {
		t.Errorf("target %q, want unix://%s", l.Target(), path)
	}
	if err := check(t, l.Target(), insecure.NewCredentials()); err != nil {
		t.Errorf("the proxy's uid was not admitted: %v", err)
	}
	if n := refused(t, reg, reasonPeerUID); n != 0 {
		t.Errorf("%v refusals, want 0", n)
	}
}

// TestPeerOfAnotherUIDIsRefused: even where the file mode let it connect,
// a peer whose SO_PEERCRED uid is not the proxy's never reaches gRPC; its
// refusal is counted. (TestUnixSocketIsTheProxysAlone admits the proxy's
// uid through the same wrapper.)
func TestPeerOfAnotherUIDIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	l := &peerCredListener{Listener: ln, uid: uint32(os.Getuid()) + 1, refused: newRefusals(reg), log: quiet}
	serve(t, &Listener{Listener: l})
	if err := check(t, "unix://"+path, insecure.NewCredentials()); err == nil {
		t.Fatal("a peer of another uid got an answer")
	}
	if n := refused(t, reg, reasonPeerUID); n < 1 {
		t.Errorf("%v refusals counted, want at least 1", n)
	}
}

// TestStaleSocketIsReplacedLiveOneIsNot: a socket left by a killed
// executor is replaced; one still served, or a file, is not touched.
func TestStaleSocketIsReplacedLiveOneIsNot(t *testing.T) {
	dir := t.TempDir()
	uid := uint32(os.Getuid())
	path := filepath.Join(dir, "decision.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(Config{Address: "unix://" + path, ProxyUID: uid}, nil, quiet); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("a live socket: %v, want in use", err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	l, err := Listen(Config{Address: "unix://" + path, ProxyUID: uid}, nil, quiet)
	if err != nil {
		t.Fatalf("a stale socket: %v", err)
	}
	l.Close()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(Config{Address: "unix://" + file, ProxyUID: uid}, nil, quiet); err == nil {
		t.Error("a regular file was replaced by the socket")
	}
}

func TestValidate(t *testing.T) {
	files := TLSFiles{CertFile: "c", KeyFile: "k", ClientCAFile: "ca", Identity: "proxy"}
	tests := []struct {
		name string
		c    Config
		want string // substring of the error; empty for none
	}{
		{"unix", Config{Address: "unix:///run/sandpit/executor/decision.sock"}, ""},
		{"relative unix", Config{Address: "unix://decision.sock"}, "absolute"},
		{"long unix", Config{Address: "unix:///" + strings.Repeat("a", 120)}, "at most"},
		{"unix with tls", Config{Address: "unix:///d.sock", TLS: files}, "no TLS"},
		{"tcp alone", Config{Address: "127.0.0.1:50053"}, "mutual TLS"},
		{"tcp half tls", Config{Address: "127.0.0.1:50053", TLS: TLSFiles{CertFile: "c", KeyFile: "k"}}, "mutual TLS"},
		{"tcp tls", Config{Address: "127.0.0.1:50053", TLS: files}, ""},
		{"tcp insecure", Config{Address: "127.0.0.1:50053", InsecureTCP: true}, ""},
		{"tcp both", Config{Address: "127.0.0.1:50053", TLS: files, InsecureTCP: true}, "exclude"},
		{"garbage", Config{Address: "decision"}, "host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestMutualTLSAdmitsOnlyTheProxysCertificate: no client certificate, one
// from another CA, one of this CA naming another identity and a server
// certificate are refused, each counted by its reason; the proxy's (by URI
// SAN or CN) is admitted.
func TestMutualTLSAdmitsOnlyTheProxysCertificate(t *testing.T) {
	const identity = "spiffe://sandpit/egress-proxy"
	dir := t.TempDir()
	ca, other := tlstest.NewCA(t, "sandpit test CA"), tlstest.NewCA(t, "another CA")
	server := ca.Server(t, "executor")
	files := TLSFiles{
		CertFile:     filepath.Join(dir, "server.pem"),
		KeyFile:      filepath.Join(dir, "server-key.pem"),
		ClientCAFile: filepath.Join(dir, "ca.pem"),
		Identity:     identity,
	}
	server.WriteFiles(t, files.CertFile, files.KeyFile)
	ca.WriteFile(t, files.ClientCAFile)
	reg := prometheus.NewRegistry()
	l, err := Listen(Config{Address: "127.0.0.1:0", TLS: files}, reg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, l)
	client := func(certs ...tlstest.Pair) credentials.TransportCredentials {
		c := &tls.Config{RootCAs: ca.Pool()}
		for _, p := range certs {
			c.Certificates = append(c.Certificates, p.TLS)
		}
		return credentials.NewTLS(c)
	}
	refusals := []struct {
		name   string
		creds  credentials.TransportCredentials
		reason string // empty: refused before TLS, not counted
	}{
		{"no certificate", client(), reasonNoCertificate},
		{"another CA's", client(other.Client(t, "egress-proxy", identity)), reasonUntrusted},
		{"another identity", client(ca.Client(t, "stranger", "spiffe://sandpit/stranger")), reasonIdentity},
		{"a server certificate", client(server), reasonUntrusted},
		{"no TLS", insecure.NewCredentials(), ""},
	}
	for _, r := range refusals {
		before := 0.0
		if r.reason != "" {
			before = refused(t, reg, r.reason)
		}
		if err := check(t, l.Target(), r.creds); err == nil {
			t.Errorf("%s: admitted", r.name)
		}
		if r.reason != "" && refused(t, reg, r.reason) <= before {
			t.Errorf("%s: the refusal was not counted as %s", r.name, r.reason)
		}
	}
	for _, p := range []tlstest.Pair{ca.Client(t, "egress-proxy", identity), ca.Client(t, identity, "")} {
		if err := check(t, l.Target(), client(p)); err != nil {
			t.Errorf("the proxy's certificate (%s) was refused: %v", p.TLS.Leaf.Subject, err)
		}
	}
}

// TestNames: an identity matches a DNS SAN (in any case), a URI SAN or
// the CN, and nothing else.
func TestNames(t *testing.T) {
	uri, _ := url.Parse("spiffe://sandpit/egress-proxy")
	c := &x509.Certificate{Subject: pkix.Name{CommonName: "proxy-cn"}, DNSNames: []string{"proxy.sandpit.test"}, URIs: []*url.URL{uri}}
	for id, want := range map[string]bool{
		"proxy-cn": true, "PROXY.sandpit.test": true, "spiffe://sandpit/egress-proxy": true,
		"sandpit.test": false, "spiffe://sandpit": false, "": false, "proxy": false,
	} {
		if got := names(c, id); got != want {
			t.Errorf("names(%q) = %v, want %v", id, got, want)
		}
	}
}
