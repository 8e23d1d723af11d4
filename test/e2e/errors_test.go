package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The error model as a client sees it (README, "Errors"): the domain and
// the reasons a caller can branch on.
const (
	errorDomain                 = "executor.sandpit.run"
	reasonInvalidArgument       = "INVALID_ARGUMENT"
	reasonImageNotAllowed       = "IMAGE_NOT_ALLOWED"
	reasonImageNotFound         = "IMAGE_NOT_FOUND"
	reasonSlotsFull             = "SLOTS_FULL"
	reasonContainerdUnavailable = "CONTAINERD_UNAVAILABLE"
)

// errorReason is the ErrorInfo reason of err's status, checking its domain.
func errorReason(t *testing.T, err error) string {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.GetDomain() != errorDomain {
				t.Errorf("ErrorInfo domain %q, want %q", info.GetDomain(), errorDomain)
			}
			return info.GetReason()
		}
	}
	t.Errorf("status %v carries no ErrorInfo", err)
	return ""
}

// retryDelay is the RetryInfo delay of err's status, 0 without one.
func retryDelay(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// TestClientDeadlineIsDeadlineExceeded: a caller whose deadline passes
// mid-execution gets DEADLINE_EXCEEDED, never the retryable UNAVAILABLE,
// and the sandbox is gone.
func TestClientDeadlineIsDeadlineExceeded(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	r := e.execute(ctx, code(`console.log("started"); setTimeout(() => console.log("late"), 20000)`))
	if status.Code(r.err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", r.err)
	}
	if r.result != nil {
		t.Errorf("a result after the deadline: %v", r.result)
	}
	requireNoLeftovers(t, stateDir, "")
}
