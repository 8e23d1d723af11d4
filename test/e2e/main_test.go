// Package e2e tests the pair end to end: the executor built by its own app
// package on a private containerd, the real runc and image, the egress
// proxy binary, nftables and network namespaces, real node programs, real
// clients over loopback.
package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/app"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// The profiles' images the tests import besides the default: node-sdk
// (the SDKs people call), node on Node.js 22, and node-debug (a shell).
const (
	sdkImage   = "sandpit.local/node-sdk:24"
	node22     = "sandpit.local/node:22"
	debugImage = "sandpit.local/node-debug:24"
)

// env is the shared private containerd.
var env *containerdtest.Env

// stateDir holds the in-process executor's code directories.
var stateDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	ctx := context.Background()
	var err error
	env, err = containerdtest.Start(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cannot start the test containerd:", err)
		return 1
	}
	defer env.Stop()
	for _, im := range []struct{ env, rel, ref string }{
		{"SANDPIT_SDK_IMAGE_TAR", "build/sandpit-node-sdk.tar", sdkImage},
		{"SANDPIT_IMAGE22_TAR", "build/sandpit-node-22.tar", node22},
		{"SANDPIT_DEBUG_IMAGE_TAR", "build/sandpit-node-debug.tar", debugImage},
	} {
		tar, err := containerdtest.Artifact(im.env, im.rel)
		if err == nil {
			err = env.ImportImage(ctx, tar, im.ref)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e: image", im.ref+":", err)
			return 1
		}
	}
	stateDir = filepath.Join(env.Dir, "executor")
	return m.Run()
}

func testLogger() *slog.Logger {
	if os.Getenv("SANDPIT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// executor is the executor built by its own app package (the binary's
// wiring) and served on loopback.
type executor struct {
	app    *app.App
	addr   string
	client executorv1.ExecutorServiceClient
	// deciderAddr serves the decision service the proxy dials.
	deciderAddr string
}

type executorOpts struct {
	slots, queue int
	allow        []string
	// egress, when set, gives sandboxes egress (and serves the decision
	// service the proxy asks).
	egress *egressOpts
	// lis is the listener to serve on; a fresh loopback one when nil.
	lis net.Listener
	// logs, when set, receives the executor's logs.
	logs io.Writer
	// flags are further executor flags.
	flags []string
}

func (o executorOpts) logger() *slog.Logger {
	if o.logs != nil {
		return slog.New(slog.NewJSONHandler(o.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return testLogger()
}

// startExecutor builds the executor from flags, as the binary does, on the
// shared containerd, and serves it on a loopback port for the test's
// lifetime.
func startExecutor(t testing.TB, o executorOpts) *executor {
	t.Helper()
	cfg, err := app.ParseConfig(executorArgs(o), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	var opts []app.Option
	if o.lis != nil {
		opts = append(opts, app.WithListener(o.lis))
	}
	ctx, stop := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, o.logger(), opts...)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	conn, err := grpc.NewClient(a.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		stop()
		if err := <-done; err != nil {
			t.Errorf("executor: %v", err)
		}
	})
	return &executor{app: a, addr: a.Addr(), client: executorv1.NewExecutorServiceClient(conn), deciderAddr: a.DecisionAddr()}
}

// executorArgs are the flags startExecutor builds the executor from.
func executorArgs(o executorOpts) []string {
	if o.slots == 0 {
		o.slots, o.queue = 16, 16
	}
	args := []string{
		"--listen", "127.0.0.1:0",
		"--metrics-listen", "",
		"--containerd-address", env.Address,
		"--containerd-namespace", containerdtest.Namespace,
		"--state-dir", stateDir,
		"--image", env.ImageRef,
		"--image-allowlist", strings.Join(o.allow, ","),
		"--max-concurrent", strconv.Itoa(o.slots),
		"--max-queue", strconv.Itoa(o.queue),
		"--shutdown-grace", "0s",
		// Cold unless a test asks for the warm pool (warm_test.go):
		// pooled sandboxes are containers the leftover checks would count.
		"--warm-pool", "0",
	}
	args = append(args, env.RuntimeFlags()...)
	if o.egress != nil {
		args = append(args, o.egress.flags()...)
	}
	return append(args, o.flags...)
}

// run is one finished execution as the client saw it.
type run struct {
	events  []*executorv1.ExecuteResponse
	started *executorv1.Started
	stdout  []byte
	stderr  []byte
	result  *executorv1.Result
	network []*executorv1.NetworkEvent
	err     error
}

// execute runs req to the end of its stream.
func (e *executor) execute(ctx context.Context, req *executorv1.ExecuteRequest) *run {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	r := &run{}
	stream, err := e.client.Execute(ctx, req)
	if err != nil {
		r.err = err
		return r
	}
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			return r
		}
		if err != nil {
			r.err = err
			return r
		}
		r.events = append(r.events, ev)
		switch x := ev.GetEvent().(type) {
		case *executorv1.ExecuteResponse_Started:
			r.started = x.Started
		case *executorv1.ExecuteResponse_Stdout:
			r.stdout = append(r.stdout, x.Stdout.GetData()...)
		case *executorv1.ExecuteResponse_Stderr:
			r.stderr = append(r.stderr, x.Stderr.GetData()...)
		case *executorv1.ExecuteResponse_Result:
			r.result = x.Result
		case *executorv1.ExecuteResponse_Network:
			r.network = append(r.network, x.Network)
		}
	}
}

// stdoutUntil reads stream until the stdout so far contains want, and
// returns that stdout and the Started event; the stream ending first fails
// the test.
func stdoutUntil(t testing.TB, stream executorv1.ExecutorService_ExecuteClient, want string) (string, *executorv1.Started) {
	t.Helper()
	var stdout strings.Builder
	var started *executorv1.Started
	for !strings.Contains(stdout.String(), want) {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("the execution ended before printing %q: %v\nstdout: %s", want, err, stdout.String())
		}
		if s := ev.GetStarted(); s != nil {
			started = s
		}
		stdout.Write(ev.GetStdout().GetData())
	}
	return stdout.String(), started
}

// mustRun runs req and fails the test unless the stream ended with a result.
func (e *executor) mustRun(t testing.TB, req *executorv1.ExecuteRequest) *run {
	t.Helper()
	r := e.execute(context.Background(), req)
	if r.err != nil {
		t.Fatalf("Execute: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
	}
	if r.result == nil {
		t.Fatalf("stream ended without a result\nstdout: %s\nstderr: %s", r.stdout, r.stderr)
	}
	return r
}

func code(src string) *executorv1.ExecuteRequest {
	return &executorv1.ExecuteRequest{Code: src}
}
