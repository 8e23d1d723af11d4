package e2e

import (
	"strings"
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

func TestHelloWorldStreamsStartedOutputResult(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	r := e.mustRun(t, code(`console.log("hello"); console.error("oops")`))

	if _, ok := r.events[0].GetEvent().(*executorv1.ExecuteResponse_Started); !ok {
		t.Fatalf("first event is %T, want started", r.events[0].GetEvent())
	}
	if _, ok := r.events[len(r.events)-1].GetEvent().(*executorv1.ExecuteResponse_Result); !ok {
		t.Fatalf("last event is %T, want result", r.events[len(r.events)-1].GetEvent())
	}
	if got := string(r.stdout); got != "hello\n" {
		t.Errorf("stdout = %q, want hello", got)
	}
	if got := string(r.stderr); got != "oops\n" {
		t.Errorf("stderr = %q, want oops", got)
	}
	res := r.result
	if res.GetExitCode() != 0 || res.GetTermination() != executorv1.Termination_TERMINATION_EXITED {
		t.Errorf("result = %v, want exit 0 EXITED", res)
	}
	if !strings.HasPrefix(r.started.GetImageDigest(), "sha256:") || r.started.GetExecutionId() == "" {
		t.Errorf("started = %v", r.started)
	}
	if res.GetWallTime().AsDuration() <= 0 || res.GetCpuTime().AsDuration() <= 0 || res.GetPeakMemoryBytes() == 0 {
		t.Errorf("usage missing: wall %v cpu %v peak %d", res.GetWallTime().AsDuration(), res.GetCpuTime().AsDuration(), res.GetPeakMemoryBytes())
	}
	if res.GetStdoutBytes() != 6 || res.GetStderrBytes() != 5 {
		t.Errorf("byte counts stdout %d stderr %d, want 6 and 5", res.GetStdoutBytes(), res.GetStderrBytes())
	}
}
