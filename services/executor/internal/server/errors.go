package server

import (
	"context"
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every error the
// executor returns.
const ErrorDomain = "executor.sandpit.run"

// Reasons are the stable google.rpc.ErrorInfo reasons a caller can act on;
// the README's error table lists them with their codes.
const (
	ReasonInvalidArgument       = "INVALID_ARGUMENT"
	ReasonImageNotAllowed       = "IMAGE_NOT_ALLOWED"
	ReasonImageNotFound         = "IMAGE_NOT_FOUND"
	ReasonImagePullFailed       = "IMAGE_PULL_FAILED"
	ReasonRuntimeUnavailable    = "RUNTIME_UNAVAILABLE"
	ReasonSlotsFull             = "SLOTS_FULL"
	ReasonAddressPoolExhausted  = "ADDRESS_POOL_EXHAUSTED"
	ReasonContainerdUnavailable = "CONTAINERD_UNAVAILABLE"
	ReasonSandboxStuck          = "SANDBOX_STUCK"
	ReasonCallerNotReading      = "CALLER_NOT_READING"
	ReasonDeadlineExceeded      = "DEADLINE_EXCEEDED"
	ReasonCancelled             = "CANCELLED"
	ReasonInternal              = "INTERNAL"
)

// retryAfter is the back-off suggested with ResourceExhausted and
// Unavailable: about one short execution.
const retryAfter = time.Second

// statusError builds a status with ErrorInfo and the given further details.
func statusError(code codes.Code, reason, msg string, meta map[string]string, details ...protoadapt.MessageV1) error {
	ds := append([]protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: meta}}, details...)
	return withDetails(status.New(code, msg), ds...)
}

func withDetails(st *status.Status, ds ...protoadapt.MessageV1) error {
	if with, err := st.WithDetails(ds...); err == nil {
		return with.Err()
	}
	return st.Err()
}

func retry() *errdetails.RetryInfo {
	return &errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)}
}

// runtimeUnavailable refuses an image bound to a runtime this host lacks.
func runtimeUnavailable(image string, rt ociruntime.Name) error {
	return statusError(codes.FailedPrecondition, ReasonRuntimeUnavailable,
		"image "+image+" runs under the OCI runtime "+string(rt)+", which is not installed on this executor; ask its operator, or name another image",
		map[string]string{"image": image, "runtime": string(rt)})
}

// invalidArgument reports every violation in a BadRequest.
func invalidArgument(vs []limits.Violation) error {
	st := status.New(codes.InvalidArgument, "invalid "+vs[0].Field+": "+vs[0].Reason)
	br := &errdetails.BadRequest{}
	for _, v := range vs {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Reason})
	}
	return withDetails(st, &errdetails.ErrorInfo{Reason: ReasonInvalidArgument, Domain: ErrorDomain}, br)
}

// callerError maps the caller's own deadline or cancellation; it is never
// Unavailable, which clients retry, running non-idempotent code twice.
func callerError(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return statusError(codes.DeadlineExceeded, ReasonDeadlineExceeded, "the call's deadline passed; the execution was stopped", nil)
	}
	return statusError(codes.Canceled, ReasonCancelled, "the call was cancelled; the execution was stopped", nil)
}

// reasonOf is the ErrorInfo reason of a status error, INTERNAL if it has
// none.
func reasonOf(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ReasonInternal
}
