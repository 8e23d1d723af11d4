package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"testing"
	"time"

	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// startStripeMock runs stripe-mock on loopback and returns the address of a
// TLS front for it. stripe-mock's own HTTPS certificate names no host, so
// the front presents the stand-ins' certificate for api.stripe.com and
// passes requests to stripe-mock's HTTP port.
func startStripeMock(t testing.TB) string {
	t.Helper()
	bin, err := containerdtest.Artifact("SANDPIT_STRIPE_MOCK", "bin/stripe-mock")
	if err != nil {
		t.Fatal(err)
	}
	httpPort := freePort(t)
	cmd := exec.Command(bin, "-http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort))
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock not up on %s: %v\n%s", addr, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	target, _ := url.Parse("http://" + addr)
	front := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	front.EnableHTTP2 = true
	front.TLS = &tls.Config{Certificates: []tls.Certificate{upstreamCert(t)}}
	front.StartTLS()
	t.Cleanup(front.Close)
	return front.Listener.Addr().String()
}
