package e2e

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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

	conn, err := grpc.NewClient(e.deciderAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
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
	// Refused at accept, the connection is closed before gRPC reads a
	// byte: UNAVAILABLE, not the verdict of a service that read the hello.
	if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
		t.Errorf("a process that is not the proxy's user reached the Decide stream: %v (ctx %v), want UNAVAILABLE at once", err, ctx.Err())
	}
	if e.app.ProxyConnected() {
		t.Error("the executor counts a proxy stream from a stranger")
	}
	t.Logf("refused: %v", err)
}
