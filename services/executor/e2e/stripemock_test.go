package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/sandpit-run/sandpit/services/executor/internal/containerdtest"
)

// startStripeMock runs stripe-mock on loopback and returns its HTTPS
// address. It plays api.stripe.com behind the proxy's upstream override.
func startStripeMock(t *testing.T) string {
	t.Helper()
	bin, err := containerdtest.Artifact("SANDPIT_STRIPE_MOCK", "bin/stripe-mock")
	if err != nil {
		t.Fatal(err)
	}
	httpPort, httpsPort := freePort(t), freePort(t)
	cmd := exec.Command(bin, "-http-port", itoa(httpPort), "-https-port", itoa(httpsPort))
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", httpsPort)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock not up on %s: %v\n%s", addr, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
