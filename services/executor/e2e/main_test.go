// Package e2e tests the executor end to end: a private containerd, the real
// runc and image, the gRPC service over loopback, real node programs.
package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/app"
	"github.com/sandpit-run/sandpit/services/executor/internal/capacity"
	"github.com/sandpit-run/sandpit/services/executor/internal/containerdtest"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/egress"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/executor/internal/server"
)

// sdkImage is the test variant of the image with stripe and axios.
const sdkImage = "sandpit.local/node-sdk:24"

// env is the shared private containerd; rt the runtime on it.
var (
	env *containerdtest.Env
	rt  *sandbox.Runtime
)

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
	sdkTar, err := containerdtest.Artifact("SANDPIT_SDK_IMAGE_TAR", "build/sandpit-node-sdk.tar")
	if err == nil {
		err = env.ImportImage(ctx, sdkTar, sdkImage)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: SDK test image:", err)
		return 1
	}
	stateDir = filepath.Join(env.Dir, "executor")
	rt, err = sandbox.New(ctx, sandboxConfig(stateDir), nil, testLogger())
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer rt.Close()
	return m.Run()
}

func sandboxConfig(stateDir string) sandbox.Config {
	return sandbox.Config{
		Address:     env.Address,
		Namespace:   containerdtest.Namespace,
		Snapshotter: "overlayfs",
		RuncPath:    env.RuncPath,
		StateDir:    stateDir,
		UID:         65532,
		GID:         65532,
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("SANDPIT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// executor is an in-process executor served on loopback.
type executor struct {
	addr string
	// deciderAddr serves the decision service, on a server of its own so
	// a test can take it away; stopDecider does.
	deciderAddr string
	stopDecider func()
	client      executorv1.ExecutorServiceClient
	shutdown    context.CancelFunc
	slots       *capacity.Limiter
}

type executorOpts struct {
	slots, queue int
	defaults     limits.Set
	allow        []string
	// egress, when set, gives sandboxes egress and serves the decision
	// service next to Execute.
	egress *egress.Egress
	// lis is the listener to serve on; a fresh loopback one when nil.
	lis net.Listener
	// logs, when set, receives the executor's logs.
	logs io.Writer
}

func (o executorOpts) logger() *slog.Logger {
	if o.logs != nil {
		return slog.New(slog.NewJSONHandler(o.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return testLogger()
}

// startExecutor serves the service on a loopback port for the test's
// lifetime.
func startExecutor(t testing.TB, o executorOpts) *executor {
	t.Helper()
	if o.slots == 0 {
		o.slots, o.queue = 16, 16
	}
	if o.defaults == (limits.Set{}) {
		o.defaults = limits.Defaults
	}
	shutdownCtx, shutdown := context.WithCancel(context.Background())
	slots := capacity.New(o.slots, o.queue)
	reg := prometheus.NewRegistry()
	cfg := server.Config{
		Defaults:       o.defaults,
		Maxima:         limits.Maxima,
		DefaultImage:   env.ImageRef,
		ImageAllowlist: o.allow,
		NodePath:       "/usr/local/bin/node",
	}
	var deciderAddr string
	stopDecider := func() {}
	if o.egress != nil {
		cfg.Egress = app.Networks(o.egress)
		dsrv := grpc.NewServer(grpc.MaxRecvMsgSize(decision.MaxMessageBytes))
		egressv1.RegisterDecisionServiceServer(dsrv, decision.NewService(o.egress.Registry(), o.logger()))
		dlis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = dsrv.Serve(dlis) }()
		deciderAddr = dlis.Addr().String()
		stopDecider = dsrv.Stop
		t.Cleanup(dsrv.Stop)
	}
	svc := server.New(shutdownCtx, cfg, rt, slots, server.NewMetrics(reg, slots), o.logger())
	srv := server.NewGRPCServer(svc, health.NewServer(), reg, 32<<20, o.logger())
	lis := o.lis
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		shutdown()
		srv.GracefulStop()
	})
	return &executor{addr: lis.Addr().String(), deciderAddr: deciderAddr, stopDecider: stopDecider, client: executorv1.NewExecutorServiceClient(conn), shutdown: shutdown, slots: slots}
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
