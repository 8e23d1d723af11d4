package e2e

import (
	"context"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sandpit-run/sandpit/services/executor/app"
)

const reasonRuntimeUnavailable = "RUNTIME_UNAVAILABLE"

// kernelProbe prints the kernel release node sees and /proc/version.
const kernelProbe = `
const os = require("os"), fs = require("fs");
console.log(JSON.stringify({ release: os.release(), version: fs.readFileSync("/proc/version", "utf8") }));
`

type kernelSeen struct{ Release, Version string }

// TestImageBoundToRunscRunsUnderGVisor: with runc the default and the SDK
// image bound to runsc, the default image's program sees the host's
// kernel and the SDK image's sees gVisor's Sentry, and neither leaves
// anything behind.
func TestImageBoundToRunscRunsUnderGVisor(t *testing.T) {
	host, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	hostRelease := strings.TrimSpace(string(host))
	e := startExecutor(t, executorOpts{allow: []string{sdkImage}, flags: []string{"--runtime", "runc", "--image-runtime", sdkImage + "=runsc"}})

	var runc, runsc kernelSeen
	probe(t, e, code(kernelProbe), &runc)
	req := code(kernelProbe)
	req.Image = sdkImage
	probe(t, e, req, &runsc)
	if runc.Release != hostRelease {
		t.Errorf("default image under runc sees kernel %q, want the host's %q", runc.Release, hostRelease)
	}
	if runsc.Release == hostRelease || !strings.Contains(runsc.Version, "Linux version "+runsc.Release) {
		t.Errorf("SDK image bound to runsc sees kernel %q (%q), want the Sentry's, not the host's %q", runsc.Release, runsc.Version, hostRelease)
	}
	requireNoLeftovers(t, stateDir, "")
}

// TestImageBoundToAbsentRuntimeIsRefused: where runsc is not installed,
// a request for an image bound to it gets FailedPrecondition with
// RUNTIME_UNAVAILABLE, the executor goes on serving the others, and an
// executor whose default runtime is absent does not start.
func TestImageBoundToAbsentRuntimeIsRefused(t *testing.T) {
	absent := []string{"--runsc", "/nonexistent/runsc"}
	e := startExecutor(t, executorOpts{allow: []string{sdkImage},
		flags: append([]string{"--runtime", "runc", "--image-runtime", sdkImage + "=runsc"}, absent...)})
	req := code(`console.log("never")`)
	req.Image = sdkImage
	r := e.execute(context.Background(), req)
	if status.Code(r.err) != codes.FailedPrecondition || errorReason(t, r.err) != reasonRuntimeUnavailable {
		t.Fatalf("image bound to an absent runtime: %v, want FailedPrecondition %s", r.err, reasonRuntimeUnavailable)
	}
	if msg := status.Convert(r.err).Message(); !strings.Contains(msg, "runsc") || !strings.Contains(msg, sdkImage) {
		t.Errorf("message %q does not name the image and its runtime", msg)
	}
	if r.started != nil || len(r.stdout) > 0 {
		t.Errorf("refused execution started: %v, stdout %q", r.started, r.stdout)
	}
	ok := e.mustRun(t, code(`console.log("ok")`))
	if string(ok.stdout) != "ok\n" || ok.result.GetExitCode() != 0 {
		t.Errorf("default image after the refusal: stdout %q, result %v", ok.stdout, ok.result)
	}

	cfg, err := app.ParseConfig(append(executorArgs(executorOpts{}), append([]string{"--runtime", "runsc"}, absent...)...), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if _, err = app.New(context.Background(), cfg, testLogger()); err == nil {
		t.Fatal("an executor whose default runtime (runsc) is absent started")
	}
	if !strings.Contains(err.Error(), "default OCI runtime") || !strings.Contains(err.Error(), "/nonexistent/runsc") {
		t.Errorf("start-up error %q does not say the default runtime is missing", err)
	}
}
