package server

import (
	"context"
	"errors"
	"fmt"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/capacity"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/netns"
	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/policy"
)

// fakeSandboxes runs programs as the test says, without containerd.
type fakeSandboxes struct {
	resolveErr error
	// missing is a runtime Installed says is not installed.
	missing ociruntime.Name
	run     func(ctx context.Context, spec sandbox.Spec, started func()) (sandbox.Outcome, error)
	// content is every image's content, for the inspector; nil is none.
	content v1.Image
}

func (f *fakeSandboxes) Content(context.Context, sandbox.Image) (v1.Image, error) {
	if f.content == nil {
		return nil, errors.New("no image content in this test")
	}
	return f.content, nil
}

func (f *fakeSandboxes) ResolveImage(_ context.Context, ref string) (sandbox.Image, error) {
	return sandbox.Image{Ref: ref, Digest: "sha256:feed"}, f.resolveErr
}

func (f *fakeSandboxes) Installed(rt ociruntime.Name) error {
	if rt == f.missing {
		return fmt.Errorf("%w: %s: /usr/bin/runsc: no such file", sandbox.ErrRuntimeUnavailable, rt)
	}
	return nil
}

func (f *fakeSandboxes) Run(ctx context.Context, _ string, spec sandbox.Spec, started func()) (sandbox.Outcome, error) {
	if spec.Released != nil {
		defer spec.Released()
	}
	return f.run(ctx, spec, started)
}

func (f *fakeSandboxes) Boot(context.Context, string, sandbox.Spec) (*sandbox.Warm, error) {
	return nil, errors.New("no warm sandboxes in this test")
}

func (f *fakeSandboxes) RunWarm(context.Context, *sandbox.Warm, sandbox.Spec, func()) (sandbox.Outcome, error) {
	return sandbox.Outcome{}, errors.New("no warm sandboxes in this test")
}

// errNoWarm is what the fake egresses' Prepare returns: no test here boots
// warm sandboxes.
var errNoWarm = errors.New("no warm sandboxes in this test")

// fakeStream records what the handler sends.
type fakeStream struct {
	grpc.ServerStream
	ctx context.Context

	mu     sync.Mutex
	events []*executorv1.ExecuteResponse
}

func (s *fakeStream) Context() context.Context { return s.ctx }

func (s *fakeStream) Send(ev *executorv1.ExecuteResponse) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, ev)
	return nil
}

func newService(t *testing.T, sb Sandboxes, slots *capacity.Limiter) *Service {
	t.Helper()
	if slots == nil {
		slots = capacity.New(4, 4)
	}
	return New(context.Background(), Config{
		Defaults:       limits.Defaults,
		Maxima:         limits.Maxima,
		DefaultImage:   "sandpit.local/node:24",
		ImageAllowlist: []string{"sandpit.local/*"},
		NodePath:       "/usr/local/bin/node",
	}, sb, slots, NewMetrics(prometheus.NewRegistry(), slots), slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func helloRun(_ context.Context, spec sandbox.Spec, started func()) (sandbox.Outcome, error) {
	started()
	if _, err := spec.Stdout.Write([]byte("hello\n")); err != nil {
		return sandbox.Outcome{}, err
	}
	return sandbox.Outcome{ExitCode: 3, WallTime: time.Millisecond}, nil
}

func TestExecuteStreamsStartedOutputResult(t *testing.T) {
	s := newService(t, &fakeSandboxes{run: helloRun}, nil)
	st := &fakeStream{ctx: context.Background()}
	if err := s.Execute(&executorv1.ExecuteRequest{Code: "x"}, st); err != nil {
		t.Fatal(err)
	}
	if len(st.events) != 3 || st.events[0].GetStarted() == nil || string(st.events[1].GetStdout().GetData()) != "hello\n" || st.events[2].GetResult() == nil {
		t.Fatalf("events %v: want started, stdout, result", st.events)
	}
	res := st.events[2].GetResult()
	if res.GetExitCode() != 3 || res.GetStdoutBytes() != 6 || res.GetTermination() != executorv1.Termination_TERMINATION_EXITED {
		t.Errorf("result %v", res)
	}
	if got := st.events[0].GetStarted().GetImageDigest(); got != "sha256:feed" {
		t.Errorf("started digest %q", got)
	}
}

// TestExecuteErrors asserts every error a caller can get by code, reason
// and, where the caller should back off, RetryInfo; internal text is never
// sent.
func TestExecuteErrors(t *testing.T) {
	const secretDetail = "shim socket /run/containerd/s/abcdef"
	failWith := func(err error) func(context.Context, sandbox.Spec, func()) (sandbox.Outcome, error) {
		return func(_ context.Context, _ sandbox.Spec, started func()) (sandbox.Outcome, error) {
			started()
			return sandbox.Outcome{}, err
		}
	}
	full := capacity.New(1, 0)
	hold, err := full.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer hold()
	expired, cancelExpired := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancelExpired()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name   string
		req    *executorv1.ExecuteRequest
		sb     *fakeSandboxes
		slots  *capacity.Limiter
		ctx    context.Context
		code   codes.Code
		reason string
		retry  bool
	}{
		{name: "invalid", req: &executorv1.ExecuteRequest{}, code: codes.InvalidArgument, reason: ReasonInvalidArgument},
		{name: "image not allowed", req: &executorv1.ExecuteRequest{Code: "1", Image: "docker.io/x:1"}, code: codes.PermissionDenied, reason: ReasonImageNotAllowed},
		{name: "image not found", sb: &fakeSandboxes{resolveErr: fmt.Errorf("resolve: %w", sandbox.ErrImageNotFound)}, code: codes.NotFound, reason: ReasonImageNotFound},
		{name: "slots full", slots: full, code: codes.ResourceExhausted, reason: ReasonSlotsFull, retry: true},
		{name: "containerd lost", sb: &fakeSandboxes{run: failWith(fmt.Errorf("%w: wait task: %s", sandbox.ErrContainerdUnavailable, secretDetail))}, code: codes.Unavailable, reason: ReasonContainerdUnavailable, retry: true},
		{name: "containerd down at resolve", sb: &fakeSandboxes{resolveErr: fmt.Errorf("resolve: %w", context.DeadlineExceeded)}, code: codes.Unavailable, reason: ReasonContainerdUnavailable, retry: true},
		{name: "runtime gone at run", sb: &fakeSandboxes{run: failWith(fmt.Errorf("create container: %w: %s", sandbox.ErrRuntimeUnavailable, secretDetail))}, code: codes.FailedPrecondition, reason: ReasonRuntimeUnavailable},
		{name: "stuck", sb: &fakeSandboxes{run: failWith(fmt.Errorf("%w: %s", sandbox.ErrStuck, secretDetail))}, code: codes.Internal, reason: ReasonSandboxStuck},
		{name: "internal", sb: &fakeSandboxes{run: failWith(errors.New(secretDetail))}, code: codes.Internal, reason: ReasonInternal},
		{name: "caller deadline", ctx: expired, sb: &fakeSandboxes{run: failWith(context.DeadlineExceeded)}, code: codes.DeadlineExceeded, reason: ReasonDeadlineExceeded},
		{name: "caller cancel", ctx: cancelled, sb: &fakeSandboxes{run: failWith(context.Canceled)}, code: codes.Canceled, reason: ReasonCancelled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.req == nil {
				tt.req = &executorv1.ExecuteRequest{Code: "1"}
			}
			if tt.sb == nil {
				tt.sb = &fakeSandboxes{run: helloRun}
			}
			if tt.sb.run == nil {
				tt.sb.run = helloRun
			}
			if tt.ctx == nil {
				tt.ctx = context.Background()
			}
			err := newService(t, tt.sb, tt.slots).Execute(tt.req, &fakeStream{ctx: tt.ctx})
			st := status.Convert(err)
			if st.Code() != tt.code {
				t.Fatalf("code %v (%v), want %v", st.Code(), err, tt.code)
			}
			var info *errdetails.ErrorInfo
			var ri *errdetails.RetryInfo
			for _, d := range st.Details() {
				switch d := d.(type) {
				case *errdetails.ErrorInfo:
					info = d
				case *errdetails.RetryInfo:
					ri = d
				}
			}
			if info == nil || info.GetReason() != tt.reason || info.GetDomain() != ErrorDomain {
				t.Errorf("ErrorInfo %v, want reason %s in %s", info, tt.reason, ErrorDomain)
			}
			if (ri != nil) != tt.retry {
				t.Errorf("RetryInfo %v, want present=%v", ri, tt.retry)
			}
			if strings.Contains(st.Message(), secretDetail) {
				t.Errorf("message %q carries internal detail", st.Message())
			}
		})
	}
}

// TestOutputAfterRunReturnsNeverPanics plays containerd being lost: its
// output copy goes on writing after Run returned. The writes must fail,
// not send on a closed channel, and the handler must end.
func TestOutputAfterRunReturnsNeverPanics(t *testing.T) {
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	sb := &fakeSandboxes{run: func(_ context.Context, spec sandbox.Spec, started func()) (sandbox.Outcome, error) {
		started()
		wg.Go(func() {
			for {
				if _, err := spec.Stdout.Write([]byte("late\n")); err != nil {
					errs <- err
					return
				}
			}
		})
		return sandbox.Outcome{}, fmt.Errorf("%w: wait task: EOF", sandbox.ErrContainerdUnavailable)
	}}
	err := newService(t, sb, nil).Execute(&executorv1.ExecuteRequest{Code: "1"}, &fakeStream{ctx: context.Background()})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, errStreamDone) {
			t.Errorf("late write: %v, want errStreamDone", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a late writer is still blocked 5s after the call ended")
	}
	wg.Wait()
}

// TestOutputLimitKillsWithTermination: output past the limit cancels the
// sandbox's context with the cause the Result reports.
func TestOutputLimitKillsWithTermination(t *testing.T) {
	sb := &fakeSandboxes{run: func(ctx context.Context, spec sandbox.Spec, started func()) (sandbox.Outcome, error) {
		started()
		chunk := []byte(strings.Repeat("x", 1024))
		for ctx.Err() == nil {
			if _, err := spec.Stdout.Write(chunk); err != nil {
				return sandbox.Outcome{}, err
			}
		}
		return sandbox.Outcome{Killed: true, ExitCode: 137, Signal: 9}, nil
	}}
	st := &fakeStream{ctx: context.Background()}
	req := &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{OutputBytes: 64 << 10}}
	if err := newService(t, sb, nil).Execute(req, st); err != nil {
		t.Fatal(err)
	}
	res := st.events[len(st.events)-1].GetResult()
	if res.GetTermination() != executorv1.Termination_TERMINATION_OUTPUT_LIMIT || !res.GetOutputTruncated() || res.GetStdoutBytes() != 64<<10 {
		t.Errorf("result %v: want output_limit, truncated, 64 KiB delivered", res)
	}
}

// stuckStream is a caller that stops reading: every Send after the first
// few blocks until the test ends.
type stuckStream struct {
	fakeStream
	unblock chan struct{}
	sent    int
}

func (s *stuckStream) Send(ev *executorv1.ExecuteResponse) error {
	if s.sent++; s.sent > 2 {
		<-s.unblock
		return context.Canceled
	}
	return s.fakeStream.Send(ev)
}

// TestCallerThatStopsReadingLosesItsCallNotItsSlot: once the sandbox ended,
// a stream that does not move for SendGrace ends the call with ABORTED
// CALLER_NOT_READING, and the capacity slot is free again.
func TestCallerThatStopsReadingLosesItsCallNotItsSlot(t *testing.T) {
	slots := capacity.New(1, 0)
	sb := &fakeSandboxes{run: func(_ context.Context, spec sandbox.Spec, started func()) (sandbox.Outcome, error) {
		started()
		for range 10 {
			if _, err := spec.Stdout.Write([]byte("x")); err != nil {
				return sandbox.Outcome{}, nil
			}
		}
		return sandbox.Outcome{}, nil
	}}
	s := newService(t, sb, slots)
	s.cfg.SendGrace = 200 * time.Millisecond
	st := &stuckStream{fakeStream: fakeStream{ctx: context.Background()}, unblock: make(chan struct{})}
	defer close(st.unblock)
	begin := time.Now()
	err := s.Execute(&executorv1.ExecuteRequest{Code: "1"}, st)
	if status.Code(err) != codes.Aborted || reasonOf(err) != ReasonCallerNotReading {
		t.Fatalf("got %v, want Aborted %s", err, ReasonCallerNotReading)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("the call took %v to end", d)
	}
	if slots.InFlight() != 0 {
		t.Errorf("%d slots still taken", slots.InFlight())
	}
}

// fakeEgress refuses to attach with err, keeping the policy the execution
// was attached with in *narrow when that is set.
type fakeEgress struct {
	err    error
	narrow **policy.Compiled
}

func (f fakeEgress) Attach(_ context.Context, _ string, narrow *policy.Compiled, _ chan<- *executorv1.NetworkEvent) (Network, error) {
	if f.narrow != nil {
		*f.narrow = narrow
	}
	return nil, f.err
}

func (f fakeEgress) Policy(narrow *policy.Compiled) *policy.Compiled { return policy.Chain(narrow) }
func (fakeEgress) Prepare() (Reservation, error)                     { return nil, errNoWarm }

func TestAttachErrors(t *testing.T) {
	tests := []struct {
		err    error
		code   codes.Code
		reason string
	}{
		{fmt.Errorf("create sandbox network: %w", netns.ErrPoolExhausted), codes.ResourceExhausted, ReasonAddressPoolExhausted},
		{errors.New("netlink: operation not permitted"), codes.Internal, ReasonInternal},
	}
	for _, tt := range tests {
		s := newService(t, &fakeSandboxes{run: helloRun}, nil)
		s.cfg.Egress = fakeEgress{err: tt.err}
		err := s.Execute(&executorv1.ExecuteRequest{Code: "1"}, &fakeStream{ctx: context.Background()})
		if status.Code(err) != tt.code || reasonOf(err) != tt.reason {
			t.Errorf("attach failing with %v: got %v, want %v %s", tt.err, err, tt.code, tt.reason)
		}
		if strings.Contains(status.Convert(err).Message(), "netlink") {
			t.Errorf("message %q carries internal detail", status.Convert(err).Message())
		}
	}
}

// TestImageRuntimeBinding asserts that a sandbox runs under the runtime its
// image is bound to, and that an image bound to a runtime this host lacks
// is refused with FailedPrecondition before anything runs.
func TestImageRuntimeBinding(t *testing.T) {
	var ran []ociruntime.Name
	sb := &fakeSandboxes{missing: ociruntime.Runsc, run: func(ctx context.Context, spec sandbox.Spec, started func()) (sandbox.Outcome, error) {
		ran = append(ran, spec.Runtime)
		return helloRun(ctx, spec, started)
	}}
	s := newService(t, sb, nil)
	s.cfg.Runtimes = ociruntime.Table{Default: ociruntime.Runc, Bindings: []ociruntime.Binding{{Image: "sandpit.local/gvisor/*", Runtime: ociruntime.Runsc}}}

	if err := s.Execute(&executorv1.ExecuteRequest{Code: "1"}, &fakeStream{ctx: context.Background()}); err != nil {
		t.Fatalf("default image: %v", err)
	}
	err := s.Execute(&executorv1.ExecuteRequest{Code: "1", Image: "sandpit.local/gvisor/node:24"}, &fakeStream{ctx: context.Background()})
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || reasonOf(err) != ReasonRuntimeUnavailable {
		t.Fatalf("bound to an absent runtime: %v, want FailedPrecondition %s", err, ReasonRuntimeUnavailable)
	}
	if !strings.Contains(st.Message(), "runsc") || !strings.Contains(st.Message(), "sandpit.local/gvisor/node:24") || strings.Contains(st.Message(), "/usr/bin") {
		t.Errorf("message %q: want the image and runtime named, no host path", st.Message())
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && (info.GetMetadata()["runtime"] != "runsc" || info.GetMetadata()["image"] != "sandpit.local/gvisor/node:24") {
			t.Errorf("ErrorInfo metadata %v", info.GetMetadata())
		}
	}

	sb.missing = ""
	if err := s.Execute(&executorv1.ExecuteRequest{Code: "1", Image: "sandpit.local/gvisor/node:24"}, &fakeStream{ctx: context.Background()}); err != nil {
		t.Fatalf("bound image with its runtime installed: %v", err)
	}
	if want := []ociruntime.Name{ociruntime.Runc, ociruntime.Runsc}; !slices.Equal(ran, want) {
		t.Errorf("sandboxes ran under %v, want %v (the refused one never runs)", ran, want)
	}
}
