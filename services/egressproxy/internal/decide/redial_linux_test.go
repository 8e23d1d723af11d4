package decide_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sandpit-run/sandpit/services/daemon/fdtest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decidetest"
)

// TestRedialsOnceDescriptorsAreFree starts the client, with the proxy's
// dial options, in a process with no descriptor free: its dials of the
// executor fail (the connection is in TRANSIENT_FAILURE, no stream said
// hello), and once descriptors are free again the stream opens on its own
// within twice MaxRedialDelay and a second: the connection's backoff and
// the stream's retry, each capped at MaxRedialDelay. A proxy out of
// descriptors when it lost its stream gets it back when a flood ends.
func TestRedialsOnceDescriptorsAreFree(t *testing.T) {
	f := decidetest.Start(t, decidetest.StripeLike)
	conn, err := grpc.NewClient(f.Addr, append(decide.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := decide.New(conn, decide.Config{Hello: testHello, Timeout: time.Second, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	defer func() { cancel(); <-done }()

	restore := fdtest.Limit(t, 0)
	go func() { defer close(done); c.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for conn.GetState() != connectivity.TransientFailure {
		if time.Now().After(deadline) {
			restore()
			t.Fatalf("connection %v with no descriptor free, want TRANSIENT_FAILURE", conn.GetState())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(2 * decide.MaxRedialDelay) // a few failed redials, the backoff at its cap
	connected, streams := c.Connected(), f.Streams()
	restore()
	if connected || streams != 0 {
		t.Fatalf("with no descriptor free: connected %v, %d streams; want neither", connected, streams)
	}

	freed := time.Now()
	bound := 2*decide.MaxRedialDelay + time.Second
	// The stream is open once the executor's side has had the hello.
	for !c.Connected() || f.Streams() == 0 {
		if time.Since(freed) > bound {
			t.Fatalf("no stream %v after descriptors were free (connection %v), want one within %v", time.Since(freed), conn.GetState(), bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("stream open %v after descriptors were free", time.Since(freed).Round(time.Millisecond))
	if got := f.Streams(); got != 1 {
		t.Errorf("%d streams said hello, want 1", got)
	}
}
