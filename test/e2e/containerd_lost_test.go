package e2e

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/app"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// startApp builds the executor with the binary's own wiring on ctd and
// serves it until the test ends. extra are further flags.
func startApp(t *testing.T, ctd *containerdtest.Env, extra ...string) (a *app.App, conn *grpc.ClientConn, stateDir string) {
	t.Helper()
	stateDir = filepath.Join(t.TempDir(), "state")
	args := append([]string{
		"--listen", "127.0.0.1:0",
		"--metrics-listen", "",
		"--containerd-address", ctd.Address,
		"--containerd-namespace", containerdtest.Namespace,
		"--state-dir", stateDir,
		"--image", ctd.ImageRef,
		"--shutdown-grace", "1s",
		"--warm-pool", "0", // as executorArgs
	}, append(ctd.RuntimeFlags(), extra...)...)
	cfg, err := app.ParseConfig(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err = app.New(ctx, cfg, testLogger())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	conn, err = grpc.NewClient(a.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("executor run: %v", err)
		}
	})
	return a, conn, stateDir
}

// waitHealth waits until the executor's health is want.
func waitHealth(t *testing.T, conn *grpc.ClientConn, want healthpb.HealthCheckResponse_ServingStatus, within time.Duration) {
	t.Helper()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: executorv1.ExecutorService_ServiceDesc.ServiceName})
		cancel()
		if err == nil && resp.GetStatus() == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("health is %v (%v), want %v within %s", resp.GetStatus(), err, want, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestContainerdLossIsSurvived kills the executor's containerd while a
// program runs: the call ends UNAVAILABLE with CONTAINERD_UNAVAILABLE, the
// executor stays up and says NOT_SERVING, and once containerd is back the
// next execution succeeds and nothing of the lost one is left.
func TestContainerdLossIsSurvived(t *testing.T) {
	ctx := context.Background()
	ctd, err := containerdtest.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ctd.Stop()
	_, conn, stateDir := startApp(t, ctd)
	client := executorv1.NewExecutorServiceClient(conn)

	// The program writes without pause, so containerd's output copy is
	// busy when containerd dies: the copy outliving the call must not
	// take the executor down.
	stream, err := client.Execute(ctx, &executorv1.ExecuteRequest{
		Code: `console.log("up"); setInterval(() => process.stdout.write("tick ".repeat(200) + "\n"), 1)`,
	})
	if err != nil {
		t.Fatal(err)
	}
	var execID string
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("before the kill: %v", err)
		}
		if s := ev.GetStarted(); s != nil {
			execID = s.GetExecutionId()
		}
		if o := ev.GetStdout(); o != nil && strings.Contains(string(o.GetData()), "up") {
			break
		}
	}
	ctd.Kill()
	killed := time.Now()
	var callErr error
	for {
		ev, err := stream.Recv()
		if err != nil {
			callErr = err
			break
		}
		if ev.GetResult() != nil {
			t.Fatalf("got a result %v after containerd was killed", ev.GetResult())
		}
	}
	if errors.Is(callErr, io.EOF) || status.Code(callErr) != codes.Unavailable {
		t.Fatalf("call ended with %v, want Unavailable", callErr)
	}
	if r := errorReason(t, callErr); r != reasonContainerdUnavailable {
		t.Errorf("reason %q, want %s", r, reasonContainerdUnavailable)
	}
	if d := time.Since(killed); d > 20*time.Second {
		t.Errorf("the call took %v to end after containerd died", d)
	}
	waitHealth(t, conn, healthpb.HealthCheckResponse_NOT_SERVING, 10*time.Second)

	// While containerd is gone, a new call is refused the same way.
	r, err := client.Execute(ctx, code(`console.log("while down")`))
	if err == nil {
		_, err = r.Recv()
	}
	if status.Code(err) != codes.Unavailable || errorReason(t, err) != reasonContainerdUnavailable {
		t.Errorf("while containerd is down: %v, want Unavailable CONTAINERD_UNAVAILABLE", err)
	}

	if err := ctd.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING, 15*time.Second)
	e := &executor{client: client}
	got := e.mustRun(t, code(`console.log("after")`))
	if string(got.stdout) != "after\n" || got.result.GetExitCode() != 0 {
		t.Errorf("after restart: stdout %q, result %v", got.stdout, got.result)
	}

	// The lost execution's container, task, snapshot and code directory
	// are reaped without a restart of the executor.
	c, err := ctd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cctx := containerdtest.WithNamespace(ctx)
	deadline := time.Now().Add(20 * time.Second)
	for {
		left := []string{}
		cs, err := c.Containers(cctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, ct := range cs {
			left = append(left, "container "+ct.ID())
		}
		sn, err := c.SnapshotService("overlayfs").Stat(cctx, execID)
		if err == nil {
			left = append(left, "snapshot "+sn.Name)
		}
		if dirs, _ := os.ReadDir(filepath.Join(stateDir, "executions")); len(dirs) > 0 {
			left = append(left, "code dir "+dirs[0].Name())
		}
		if procs := processesOf(execID); len(procs) > 0 {
			left = append(left, "processes "+strings.Join(procs, ","))
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left of the lost execution %s: %v", execID, left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// processesOf lists the pids whose cgroup names the execution.
func processesOf(id string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err == nil && strings.Contains(string(b), id) {
			out = append(out, e.Name())
		}
	}
	return out
}
