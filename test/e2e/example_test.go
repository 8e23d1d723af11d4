package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExampleGoClient runs examples/go/sandpit-run, the Go client users
// start from, against the executor: output is copied through, arguments
// arrive, and the program's exit code becomes the client's.
func TestExampleGoClient(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	bin := filepath.Join(t.TempDir(), "sandpit-run")
	build := exec.Command("go", "build", "-o", bin, "./sandpit-run")
	build.Dir = "../../examples/go"
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	out, err := exec.Command(bin, "-addr", e.addr, "-q", "../../examples/js/hello.mjs", "tester").Output()
	if err != nil {
		t.Fatalf("sandpit-run: %v", err)
	}
	if !strings.HasPrefix(string(out), "hello, tester, from node v24.") || !strings.Contains(string(out), "uid 65532") {
		t.Errorf("stdout %q", out)
	}

	failing := filepath.Join(t.TempDir(), "fail.js")
	if err := os.WriteFile(failing, []byte(`console.error("bad"); process.exit(3)`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-addr", e.addr, failing)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Errorf("exit %v, want 3", err)
	}
	if !strings.Contains(stderr.String(), "bad\n") || !strings.Contains(stderr.String(), "TERMINATION_EXITED exit 3") {
		t.Errorf("stderr %q", stderr.String())
	}
}

// TestExamplePythonClient runs examples/python/sandpit_run.py, on the stubs
// in gen/python, with Debian's grpcio: the same contract as the Go client.
func TestExamplePythonClient(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	failing := filepath.Join(t.TempDir(), "fail.js")
	if err := os.WriteFile(failing, []byte(`console.log("from python's client", process.argv[2]); process.exit(4)`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/bin/python3", "../../examples/python/sandpit_run.py", "--addr", e.addr, failing, "arg1")
	cmd.Env = append(os.Environ(), "PYTHONPATH=../../gen/python")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 4 {
		t.Fatalf("exit %v, want 4\nstderr: %s", err, stderr.String())
	}
	if stdout.String() != "from python's client arg1\n" || !strings.Contains(stderr.String(), "TERMINATION_EXITED exit 4") {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}

// TestExampleNodeClient runs examples/node/sandpit-run.mjs, on the stubs in
// gen/ts with connect-node's gRPC transport: the same contract as the Go
// client. make test installs its packages (npm ci in examples/node).
func TestExampleNodeClient(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	failing := filepath.Join(t.TempDir(), "fail.mjs")
	if err := os.WriteFile(failing, []byte(`console.log("from node's client", process.argv[2]); process.exit(5)`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", "../../examples/node/sandpit-run.mjs", "--addr", e.addr, failing, "arg1")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 5 {
		t.Fatalf("exit %v, want 5\nstderr: %s", err, stderr.String())
	}
	if stdout.String() != "from node's client arg1\n" || !strings.Contains(stderr.String(), "EXITED exit 5") {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}
