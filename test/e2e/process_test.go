package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// executorBinary builds cmd/sandpit-executor once per test run.
func executorBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sandpit-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "sandpit-executor")
		out, err := exec.Command("go", "build", "-o", binPath, "../../services/executor/cmd/sandpit-executor").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is the executor running as its own process.
type proc struct {
	cmd      *exec.Cmd
	addr     string
	stateDir string
	logs     *lockedBuffer
	done     chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

// startProc starts the executor binary on the test containerd and waits
// until its health check answers SERVING.
func startProc(t *testing.T, stateDir string, extra ...string) *proc {
	t.Helper()
	p := &proc{addr: freeAddr(t), stateDir: stateDir, logs: &lockedBuffer{}, done: make(chan struct{})}
	args := append([]string{
		"--listen", p.addr,
		"--metrics-listen", "",
		"--containerd-address", env.Address,
		"--containerd-namespace", containerdtest.Namespace,
		"--state-dir", stateDir,
		"--image", env.ImageRef,
		"--warm-pool", "0", // as executorArgs
	}, append(env.RuntimeFlags(), extra...)...)
	p.cmd = exec.Command(executorBinary(t), args...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("executor log:\n%s", p.logs.String())
		}
	})
	waitServing(t, "executor", p.addr, "sandpit.executor.v1.ExecutorService", p.done, p.logs)
	return p
}

// waitServing waits until the gRPC health check of service at addr says
// SERVING, failing the test if the process (done) exits or 30s pass.
func waitServing(t testing.TB, what, addr, service string, done <-chan struct{}, logs *lockedBuffer) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		cancel()
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
		select {
		case <-done:
			t.Fatalf("%s exited: %s", what, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not serving after 30s (last: %v)\n%s", what, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *proc) client(t *testing.T) executorv1.ExecutorServiceClient {
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return executorv1.NewExecutorServiceClient(conn)
}

// TestGrpcurlStreamsHelloWorld calls Execute with the real grpcurl through
// server reflection, as the README shows.
func TestGrpcurlStreamsHelloWorld(t *testing.T) {
	grpcurl, err := containerdtest.Artifact("SANDPIT_GRPCURL", "bin/grpcurl")
	if err != nil {
		t.Fatal(err)
	}
	p := startProc(t, t.TempDir())
	out, err := exec.Command(grpcurl, "-plaintext", "-d", `{"code": "console.log('hello from sandpit')"}`,
		p.addr, "sandpit.executor.v1.ExecutorService/Execute").CombinedOutput()
	if err != nil {
		t.Fatalf("grpcurl: %v\n%s", err, out)
	}
	kinds, stdout := grpcurlEvents(t, out)
	if len(kinds) < 3 || kinds[0] != "started" || kinds[len(kinds)-1] != "result" {
		t.Fatalf("event kinds %v, want started ... result\n%s", kinds, out)
	}
	firstStdout, last := -1, len(kinds)-1
	for i, k := range kinds {
		if k == "stdout" && firstStdout < 0 {
			firstStdout = i
		}
	}
	if firstStdout < 0 || firstStdout > last {
		t.Errorf("no stdout event before the result: %v", kinds)
	}
	if stdout != "hello from sandpit\n" {
		t.Errorf("stdout %q", stdout)
	}

	// Reflection lists the service, and health answers, for grpcurl users.
	out, err = exec.Command(grpcurl, "-plaintext", p.addr, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "sandpit.executor.v1.ExecutorService") || !strings.Contains(string(out), "grpc.health.v1.Health") {
		t.Errorf("grpcurl list: %v\n%s", err, out)
	}
}

// grpcurlEvents reads grpcurl's output of an Execute stream, one JSON
// object per message: the events' kinds in order, and the stdout in them.
func grpcurlEvents(t *testing.T, out []byte) (kinds []string, stdout string) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var m map[string]json.RawMessage
		if err := dec.Decode(&m); err == io.EOF {
			return kinds, stdout
		} else if err != nil {
			t.Fatalf("grpcurl output is not a JSON stream: %v\n%s", err, out)
		}
		for k, v := range m {
			kinds = append(kinds, k)
			if k == "stdout" {
				var o struct{ Data []byte }
				if err := json.Unmarshal(v, &o); err != nil {
					t.Fatal(err)
				}
				stdout += string(o.Data)
			}
		}
	}
}

// TestSIGKILLedExecutorsLeftoversAreRemovedOnRestart kills the executor
// while a sandbox runs, checks the sandbox is still there, and checks that
// the next executor removes it on start.
func TestSIGKILLedExecutorsLeftoversAreRemovedOnRestart(t *testing.T) {
	dir := t.TempDir()
	marker := fmt.Sprintf("sandpit-orphan-%d", time.Now().UnixNano())
	p := startProc(t, dir)
	stream, err := p.client(t).Execute(context.Background(), code(fmt.Sprintf(`
const { spawn } = require("child_process");
spawn(process.execPath, ["-e", "/*%s*/ setInterval(() => {}, 1000)"], { detached: true, stdio: "ignore" }).unref();
console.log("running"); setInterval(() => {}, 1000);`, marker)))
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("stream ended before the program ran: %v", err)
		}
		if ev.GetStdout() != nil {
			break
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	if l := leftovers(t, dir, marker); len(l) == 0 {
		t.Fatal("nothing left after SIGKILL; the test would prove nothing")
	}

	p2 := startProc(t, dir)
	requireNoLeftovers(t, dir, marker)
	if !strings.Contains(p2.logs.String(), `"containers":1`) {
		t.Errorf("the new executor did not report removing the container:\n%s", p2.logs.String())
	}
}

// TestShutdownKillsRunningExecutionsAfterGrace sends SIGTERM while a long
// program runs: the caller gets a result saying shutdown, and nothing is
// left.
func TestShutdownKillsRunningExecutionsAfterGrace(t *testing.T) {
	dir := t.TempDir()
	p := startProc(t, dir, "--shutdown-grace", "500ms")
	stream, err := p.client(t).Execute(context.Background(), code(`console.log("running"); setInterval(() => {}, 1000);`))
	if err != nil {
		t.Fatal(err)
	}
	var res *executorv1.Result
	sent := false
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream: %v\n%s", err, p.logs.String())
		}
		if ev.GetStdout() != nil && !sent {
			sent = true
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}
		if ev.GetResult() != nil {
			res = ev.GetResult()
		}
	}
	if res.GetTermination() != executorv1.Termination_TERMINATION_SHUTDOWN {
		t.Errorf("result %v, want termination SHUTDOWN", res)
	}
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("executor did not exit after SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("executor exit code %d after SIGTERM", code)
	}
	requireNoLeftovers(t, dir, "")
}
