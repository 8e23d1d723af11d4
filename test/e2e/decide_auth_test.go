package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
)

// TestOnlyTheProxyOpensTheDecideStream: an executor whose proxy runs as
// nobody serves decisions on a socket of mode 0600 owned by nobody, and a
// process of another user (this test, as root, whom the file mode lets
// through) cannot open the Decide stream: its connection is closed before
// its hello is read, and the executor holds no proxy stream. The decision listener's own tests
// (services/executor/internal/decisionlisten) run processes as other uids.
func TestOnlyTheProxyOpensTheDecideStream(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	eo := startEgress(t, ports, basePolicy)
	e := startExecutor(t, executorOpts{egress: eo, flags: []string{"--proxy-user", "65534"}})

	fi, err := os.Stat(eo.decisionSocket)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 || st.Uid != 65534 {
		t.Errorf("decision socket %v owned by %d, want a socket of mode 0600 owned by the proxy's uid 65534", fi.Mode(), st.Uid)
	}
	if !strings.HasPrefix(e.deciderAddr, "unix://") {
		t.Fatalf("decision address %q, want unix://", e.deciderAddr)
	}

	// Refused at accept, the connection is closed before gRPC reads a
	// byte: UNAVAILABLE, not the verdict of a service that read the hello.
	err = openDecide(t, e.deciderAddr, insecure.NewCredentials())
	if status.Code(err) != codes.Unavailable {
		t.Errorf("a process that is not the proxy's user reached the Decide stream: %v, want UNAVAILABLE at once", err)
	}
	if e.app.ProxyConnected() {
		t.Error("the executor counts a proxy stream from a stranger")
	}
	t.Logf("refused: %v", err)
}

// TestDecideStreamOverMutualTLS: with a TCP decision listener and mutual
// TLS (certificates made with openssl, as the README shows), the proxy
// with its certificate opens the Decide stream and a sandbox's allowed
// request goes through; a client without a certificate, and one with a
// certificate of the same CA naming another identity, cannot open it.
func TestDecideStreamOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	openssl := func(args ...string) {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	leaf := func(name, cn, san, usage string) {
		openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN="+cn,
			"-addext", "basicConstraints=critical,CA:FALSE", "-addext", "subjectAltName="+san, "-addext", "extendedKeyUsage="+usage,
			"-CA", "ca.pem", "-CAkey", "ca-key.pem", "-keyout", name+"-key.pem", "-out", name+".pem")
	}
	openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
		"-subj", "/CN=sandpit decision CA", "-keyout", "ca-key.pem", "-out", "ca.pem")
	leaf("executor", "executor", "IP:127.0.0.1", "serverAuth")
	leaf("proxy", "egress-proxy", "URI:spiffe://sandpit/egress-proxy", "clientAuth")
	leaf("stranger", "stranger", "URI:spiffe://sandpit/stranger", "clientAuth")
	file := func(name string) string { return filepath.Join(dir, name) }

	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	decider := "127.0.0.1:" + itoa(freePort(t))
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy), flags: []string{
		"--decision-listen", decider,
		"--decision-tls-cert", file("executor.pem"), "--decision-tls-key", file("executor-key.pem"),
		"--decision-client-ca", file("ca.pem"), "--decision-proxy-identity", "spiffe://sandpit/egress-proxy",
	}})
	if e.deciderAddr != decider {
		t.Fatalf("decision address %q, want %q", e.deciderAddr, decider)
	}

	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(file("ca.pem"))
	if err != nil || !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("ca.pem: %v", err)
	}
	stranger, err := tls.LoadX509KeyPair(file("stranger.pem"), file("stranger-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for name, creds := range map[string]credentials.TransportCredentials{
		"plain TCP":             insecure.NewCredentials(),
		"no client certificate": credentials.NewTLS(&tls.Config{RootCAs: roots}),
		"another identity":      credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{stranger}}),
	} {
		if err := openDecide(t, decider, creds); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v, want UNAVAILABLE before the hello is read", name, err)
		}
	}

	pay := newStandIn(t, "pay.test")
	px := startProxy(t, ports, decider, map[string]string{"pay.test": pay.addr()}, upstreamCAPEM(t),
		"--decider-tls-cert", file("proxy.pem"), "--decider-tls-key", file("proxy-key.pem"), "--decider-ca", file("ca.pem"))
	e.waitProxy(t, px)
	r := e.execute(context.Background(), code(`
fetch("https://pay.test/v1/products/p1").then(r => console.log(r.status), e => console.log("error", e.cause?.code || e.message));
`))
	if r.err != nil || strings.TrimSpace(string(r.stdout)) != "200" {
		t.Errorf("an allowed request through the proxy on mutual TLS: %v, stdout %q stderr %q", r.err, r.stdout, r.stderr)
	}
}

// openDecide opens a Decide stream to target with creds and sends a
// hello; the error is what refused it, nil if nothing did within 5 s.
func openDecide(t *testing.T, target string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := egressv1.NewDecisionServiceClient(conn).Decide(ctx)
	if err == nil {
		hello := &egressv1.DecideRequest{Kind: &egressv1.DecideRequest_Hello{Hello: &egressv1.Hello{ProxyVersion: "forged", CaCertificatePem: []byte("forged")}}}
		if err = stream.Send(hello); err == nil {
			_, err = stream.Recv()
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}
