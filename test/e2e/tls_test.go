package e2e

import (
	"crypto/tls"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/daemon/tlstest"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// tlsFiles are the PEM files a TLS test hands the executor and grpcurl.
type tlsFiles struct {
	ca                    *tlstest.CA
	caFile                string
	cert, key             string
	clientCA              string
	client                tlstest.Pair
	clientCert, clientKey string
}

// newTLSFiles makes a server CA and certificate, and a client CA and a
// client certificate it signs, under a fresh directory.
func newTLSFiles(t *testing.T) tlsFiles {
	t.Helper()
	dir := t.TempDir()
	f := tlsFiles{
		ca: tlstest.NewCA(t, "sandpit test ca"), caFile: filepath.Join(dir, "ca.crt"),
		cert: filepath.Join(dir, "tls.crt"), key: filepath.Join(dir, "tls.key"),
		clientCA: filepath.Join(dir, "clients.crt"), clientCert: filepath.Join(dir, "client.crt"), clientKey: filepath.Join(dir, "client.key"),
	}
	f.ca.WriteFile(t, f.caFile)
	f.ca.Server(t, "sandpit-executor").WriteFiles(t, f.cert, f.key)
	clients := tlstest.NewCA(t, "sandpit test client ca")
	clients.WriteFile(t, f.clientCA)
	f.client = clients.Client(t, "alice", "spiffe://sandpit.test/tenant/acme")
	f.client.WriteFiles(t, f.clientCert, f.clientKey)
	return f
}

// withClient is e reached over a TLS connection trusting f's CA and
// presenting certs.
func (f tlsFiles) withClient(t *testing.T, e *executor, certs ...tls.Certificate) *executor {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: f.ca.Pool(), Certificates: certs, ServerName: "localhost",
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &executor{app: e.app, addr: e.addr, client: executorv1.NewExecutorServiceClient(conn)}
}

// grpcurlHello runs hello-world through Execute with the real grpcurl
// and its flags, and returns the stdout it streamed, or its error output.
func grpcurlHello(t *testing.T, addr string, flags ...string) (string, error) {
	t.Helper()
	grpcurl, err := containerdtest.Artifact("SANDPIT_GRPCURL", "bin/grpcurl")
	if err != nil {
		t.Fatal(err)
	}
	args := append(flags, "-d", `{"code": "console.log('hello over tls')"}`, addr, "sandpit.executor.v1.ExecutorService/Execute")
	out, err := exec.Command(grpcurl, args...).CombinedOutput()
	if err != nil {
		return string(out), err
	}
	_, stdout := grpcurlEvents(t, out)
	return stdout, nil
}

// TestExecuteOverTLS serves the executor's caller port with TLS: a
// plaintext caller is refused, a TLS client and grpcurl -cacert run code,
// and renewed files serve the next connection without a restart.
func TestExecuteOverTLS(t *testing.T) {
	f := newTLSFiles(t)
	logs := &lockedBuffer{}
	e := startExecutor(t, executorOpts{logs: logs, flags: []string{"--tls-cert", f.cert, "--tls-key", f.key}})

	// startExecutor's own client speaks plaintext.
	if r := e.execute(t.Context(), code(`console.log("hi")`)); r.err == nil {
		t.Fatalf("a plaintext caller ran code on a TLS port: %q", r.stdout)
	}
	r := f.withClient(t, e).mustRun(t, code(`console.log("hello over tls")`))
	if string(r.stdout) != "hello over tls\n" {
		t.Errorf("stdout %q over TLS", r.stdout)
	}

	if out, err := grpcurlHello(t, e.addr, "-plaintext"); err == nil {
		t.Errorf("grpcurl -plaintext ran code on a TLS port: %q", out)
	}
	// localhost: the name the test certificate is for.
	addr := strings.Replace(e.addr, "127.0.0.1", "localhost", 1)
	if out, err := grpcurlHello(t, addr, "-cacert", f.caFile); err != nil || out != "hello over tls\n" {
		t.Errorf("grpcurl -cacert: %v\n%s", err, out)
	}

	// A renewed pair serves the next connection; a broken one leaves it.
	f.ca.Server(t, "sandpit-executor-renewed").WriteFiles(t, f.cert, f.key)
	if cn := f.serverName(t, e); cn != "sandpit-executor-renewed" {
		t.Errorf("after renewal the executor serves %q", cn)
	}
	tlstest.Pair{CertPEM: f.ca.PEM, KeyPEM: []byte("truncated")}.WriteFiles(t, f.cert, f.key)
	if cn := f.serverName(t, e); cn != "sandpit-executor-renewed" {
		t.Errorf("after a broken renewal the executor serves %q", cn)
	}
	if !strings.Contains(logs.String(), "does not load; keeping the previous pair") {
		t.Error("the broken renewal was not logged")
	}
}

// serverName is the common name of the certificate e serves a new
// connection, asked over health.
func (f tlsFiles) serverName(t *testing.T, e *executor) string {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: f.ca.Pool(), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatalf("health over TLS: %v", err)
	}
	return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].Subject.CommonName
}

// TestExecuteOverMTLS requires a client certificate from --tls-client-ca:
// without one a caller is refused, with one it runs code and the
// executor's call log names it.
func TestExecuteOverMTLS(t *testing.T) {
	f := newTLSFiles(t)
	logs := &lockedBuffer{}
	e := startExecutor(t, executorOpts{logs: logs, flags: []string{"--tls-cert", f.cert, "--tls-key", f.key, "--tls-client-ca", f.clientCA}})

	if r := f.withClient(t, e).execute(t.Context(), code(`console.log("hi")`)); r.err == nil {
		t.Fatalf("a caller without a client certificate ran code: %q", r.stdout)
	}
	r := f.withClient(t, e, f.client.TLS).mustRun(t, code(`console.log("hello over mtls")`))
	if string(r.stdout) != "hello over mtls\n" {
		t.Errorf("stdout %q over mTLS", r.stdout)
	}
	if want := `"client_identity":"spiffe://sandpit.test/tenant/acme"`; !strings.Contains(logs.String(), want) {
		t.Errorf("the executor's log lacks %s", want)
	}

	addr := strings.Replace(e.addr, "127.0.0.1", "localhost", 1)
	if out, err := grpcurlHello(t, addr, "-cacert", f.caFile); err == nil {
		t.Errorf("grpcurl without a client certificate ran code: %q", out)
	}
	if out, err := grpcurlHello(t, addr, "-cacert", f.caFile, "-cert", f.clientCert, "-key", f.clientKey); err != nil || out != "hello over tls\n" {
		t.Errorf("grpcurl -cacert -cert -key: %v\n%s", err, out)
	}
}
