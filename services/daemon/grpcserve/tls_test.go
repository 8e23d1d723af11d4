package grpcserve

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/sandpit-run/sandpit/services/daemon/tlstest"
)

// whoami answers EmptyCall and keeps the client identity it saw.
type whoami struct {
	testgrpc.UnimplementedTestServiceServer
	mu     sync.Mutex
	seen   ClientIdentity
	wasSet bool
}

// last is the identity the last call saw, and whether it was verified.
func (w *whoami) last() (ClientIdentity, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen, w.wasSet
}

func (w *whoami) EmptyCall(ctx context.Context, _ *testgrpc.Empty) (*testgrpc.Empty, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen, w.wasSet = VerifiedClient(ctx)
	return &testgrpc.Empty{}, nil
}

// syncLog keeps the server's log lines.
type syncLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// tlsServer serves whoami with ServerCredentials(f) on a loopback port.
func tlsServer(t *testing.T, f TLSFiles) (addr string, w *whoami, logs *syncLog) {
	t.Helper()
	logs = &syncLog{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	creds, err := ServerCredentials(f, log)
	if err != nil {
		t.Fatal(err)
	}
	w = &whoami{}
	srv := New(Options{
		Registerer: prometheus.NewRegistry(), Log: log, Health: health.NewServer(),
		ServerOptions: []grpc.ServerOption{grpc.Creds(creds)},
	}, func(r grpc.ServiceRegistrar) { testgrpc.RegisterTestServiceServer(r, w) })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), w, logs
}

// call makes one EmptyCall on a new connection, so a new handshake, and
// returns the server certificate's common name.
func call(t *testing.T, addr string, creds credentials.TransportCredentials) (serverCN string, err error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := testgrpc.NewTestServiceClient(conn).EmptyCall(ctx, &testgrpc.Empty{}, grpc.Peer(&p)); err != nil {
		return "", err
	}
	return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].Subject.CommonName, nil
}

func clientTLS(ca *tlstest.CA, certs ...tls.Certificate) credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), Certificates: certs, ServerName: "localhost"})
}

func TestTLSRefusesPlaintextAndStrangeCAs(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test ca")
	f := TLSFiles{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	ca.Server(t, "executor").WriteFiles(t, f.CertFile, f.KeyFile)
	addr, w, _ := tlsServer(t, f)

	if _, err := call(t, addr, insecure.NewCredentials()); err == nil {
		t.Error("a plaintext client got an answer from a TLS server")
	}
	if _, err := call(t, addr, clientTLS(tlstest.NewCA(t, "other ca"))); err == nil {
		t.Error("a client trusting another CA accepted the server")
	}
	cn, err := call(t, addr, clientTLS(ca))
	if err != nil || cn != "executor" {
		t.Fatalf("TLS client with the right CA: server %q, %v", cn, err)
	}
	if seen, ok := w.last(); ok {
		t.Errorf("without mTLS the handler saw a verified client %v", seen)
	}
}

func TestMTLSRequiresAClientCertificateFromItsCA(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test ca")
	f := TLSFiles{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), ClientCAFile: filepath.Join(dir, "clients.crt")}
	ca.Server(t, "executor").WriteFiles(t, f.CertFile, f.KeyFile)
	clients := tlstest.NewCA(t, "client ca")
	clients.WriteFile(t, f.ClientCAFile)
	addr, w, logs := tlsServer(t, f)

	if _, err := call(t, addr, clientTLS(ca)); err == nil {
		t.Error("a client without a certificate got an answer")
	}
	stranger := tlstest.NewCA(t, "client ca").Client(t, "mallory", "spiffe://sandpit.test/mallory")
	if _, err := call(t, addr, clientTLS(ca, stranger.TLS)); err == nil {
		t.Error("a client certificate from another CA (of the same name) was accepted")
	}
	// The server's own CA signs no clients: its certificates are refused too.
	if _, err := call(t, addr, clientTLS(ca, ca.Client(t, "server-ca-client", "").TLS)); err == nil {
		t.Error("a client certificate from the server's CA, not the client CA, was accepted")
	}
	if seen, ok := w.last(); ok {
		t.Fatalf("a refused client reached the handler as %v", seen)
	}

	good := clients.Client(t, "alice", "spiffe://sandpit.test/tenant/acme")
	if _, err := call(t, addr, clientTLS(ca, good.TLS)); err != nil {
		t.Fatalf("a client with a good certificate: %v", err)
	}
	seen, ok := w.last()
	if !ok || seen.CommonName != "alice" || len(seen.URIs) != 1 || seen.URIs[0] != "spiffe://sandpit.test/tenant/acme" {
		t.Errorf("handler saw %+v (verified %v), want alice with its SPIFFE ID", seen, ok)
	}
	if want := `"client_identity":"spiffe://sandpit.test/tenant/acme"`; !strings.Contains(logs.String(), want) {
		t.Errorf("call log lacks %s:\n%s", want, logs)
	}

	cnOnly := clients.Client(t, "bob", "")
	if _, err := call(t, addr, clientTLS(ca, cnOnly.TLS)); err != nil {
		t.Fatalf("a client certificate without URI SAN: %v", err)
	}
	if want := `"client_identity":"bob"`; !strings.Contains(logs.String(), want) {
		t.Errorf("call log lacks %s:\n%s", want, logs)
	}
}

func TestTLSFollowsItsFilesAndKeepsTheLastGoodPair(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test ca")
	f := TLSFiles{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	ca.Server(t, "one").WriteFiles(t, f.CertFile, f.KeyFile)
	addr, _, logs := tlsServer(t, f)
	expect := func(want string) {
		t.Helper()
		if cn, err := call(t, addr, clientTLS(ca)); err != nil || cn != want {
			t.Fatalf("server certificate %q (%v), want %q", cn, err, want)
		}
	}
	expect("one")

	ca.Server(t, "two").WriteFiles(t, f.CertFile, f.KeyFile)
	expect("two")
	if !strings.Contains(logs.String(), "tls certificate reloaded") {
		t.Errorf("no reload logged:\n%s", logs)
	}

	// A certificate with another certificate's key, then garbage: the
	// last good pair serves on, and each bad change is logged once.
	three, four := ca.Server(t, "three"), ca.Server(t, "four")
	tlstest.Pair{CertPEM: three.CertPEM, KeyPEM: four.KeyPEM}.WriteFiles(t, f.CertFile, f.KeyFile)
	expect("two")
	expect("two")
	if n := strings.Count(logs.String(), "does not load; keeping the previous pair"); n != 1 {
		t.Errorf("mismatched pair logged %d times, want once:\n%s", n, logs)
	}
	tlstest.Pair{CertPEM: []byte("not a certificate"), KeyPEM: four.KeyPEM}.WriteFiles(t, f.CertFile, f.KeyFile)
	expect("two")
	if n := strings.Count(logs.String(), "does not load; keeping the previous pair"); n != 2 {
		t.Errorf("broken files logged %d times in all, want twice:\n%s", n, logs)
	}

	four.WriteFiles(t, f.CertFile, f.KeyFile)
	expect("four")
}

func TestServerCredentialsRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test ca")
	cert, key, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	ca.Server(t, "executor").WriteFiles(t, cert, key)
	ca.WriteFile(t, caFile)
	garbage := filepath.Join(dir, "garbage")
	tlstest.Pair{CertPEM: []byte("x"), KeyPEM: []byte("x")}.WriteFiles(t, garbage, garbage)
	tests := []struct {
		name string
		f    TLSFiles
		want string
	}{
		{"cert without key", TLSFiles{CertFile: cert}, "go together"},
		{"key without cert", TLSFiles{KeyFile: key}, "go together"},
		{"client CA without TLS", TLSFiles{ClientCAFile: caFile}, "needs tls-cert"},
		{"missing cert file", TLSFiles{CertFile: filepath.Join(dir, "nope"), KeyFile: key}, "no such file"},
		{"key that does not match", TLSFiles{CertFile: cert, KeyFile: garbage}, "tls certificate"},
		{"client CA without a certificate", TLSFiles{CertFile: cert, KeyFile: key, ClientCAFile: garbage}, "no PEM certificate"},
		{"missing client CA", TLSFiles{CertFile: cert, KeyFile: key, ClientCAFile: filepath.Join(dir, "nope")}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ServerCredentials(tt.f, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}
