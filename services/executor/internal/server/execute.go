// Package server serves sandpit.executor.v1.ExecutorService: it validates a
// request, admits it under the capacity limit, runs it in a sandbox and
// streams the sandbox's events from a single sending goroutine.
package server

import (
	"context"
	"errors"
	"log/slog"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/capacity"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/egress"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Sandboxes runs programs in sandboxes; *sandbox.Runtime is the real one.
type Sandboxes interface {
	ResolveImage(ctx context.Context, ref string) (sandbox.Image, error)
	Run(ctx context.Context, id string, spec sandbox.Spec, started func()) (sandbox.Outcome, error)
}

// Egress attaches sandboxes to the egress proxy; *egress.Egress is the real
// one.
type Egress interface {
	Attach(ctx context.Context, id string, inline *policy.Compiled, events chan<- *executorv1.NetworkEvent) (*egress.Attachment, error)
}

// Config is what the service needs to know of the executor's configuration.
type Config struct {
	Defaults, Maxima limits.Set
	DefaultImage     string
	// ImageAllowlist holds image references a request may name besides the
	// default; an entry ending in * matches by prefix.
	ImageAllowlist []string
	// NodePath is node's path inside the image.
	NodePath string
	// Egress, when set, gives every sandbox policy-controlled egress
	// through the proxy; without it sandboxes have loopback only.
	Egress Egress
}

// Causes of a sandbox being killed before its program ended.
var (
	errShutdown    = errors.New("executor is shutting down")
	errOutputLimit = errors.New("output limit reached")
)

// Service implements executorv1.ExecutorServiceServer.
type Service struct {
	executorv1.UnimplementedExecutorServiceServer

	cfg      Config
	sb       Sandboxes
	slots    *capacity.Limiter
	shutdown context.Context
	log      *slog.Logger
	metrics  *metrics
}

// New returns the service. Executions in flight are killed, with a result
// saying so, when shutdown ends.
func New(shutdown context.Context, cfg Config, sb Sandboxes, slots *capacity.Limiter, m *metrics, log *slog.Logger) *Service {
	return &Service{cfg: cfg, sb: sb, slots: slots, shutdown: shutdown, log: log, metrics: m}
}

// Execute runs one program; see the proto for the contract.
func (s *Service) Execute(req *executorv1.ExecuteRequest, stream grpc.ServerStreamingServer[executorv1.ExecuteResponse]) error {
	ctx := stream.Context()
	prog, vs := s.validate(req)
	if len(vs) > 0 {
		return invalidArgument(vs)
	}

	release, err := s.slots.Acquire(ctx)
	if errors.Is(err, capacity.ErrFull) {
		s.metrics.rejected.Inc()
		return status.Error(codes.ResourceExhausted, "every execution slot is busy and the wait queue is full; retry later")
	}
	if err != nil {
		return status.FromContextError(err).Err()
	}
	defer release()

	img, err := s.sb.ResolveImage(ctx, prog.image)
	if errors.Is(err, sandbox.ErrImageNotFound) {
		return invalidArgument([]limits.Violation{{Field: "image", Reason: "image " + prog.image + " is not in the executor's containerd"}})
	}
	if err != nil {
		return sandboxError(err)
	}

	id := sandbox.NewID()
	log := s.log.With("execution_id", id)
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(s.shutdown, func() { cancel(errShutdown) })
	defer stop()

	// Network events arrive from the decision service, which must never
	// block on one execution's stream: they get their own buffer and are
	// dropped past it (the result's log keeps every request).
	netEvents := make(chan *executorv1.NetworkEvent, 256)
	var att *egress.Attachment
	if s.cfg.Egress != nil {
		att, err = s.cfg.Egress.Attach(ctx, id, prog.policy, netEvents)
		if errors.Is(err, egress.ErrNoAddress) {
			s.metrics.rejected.Inc()
			return status.Error(codes.ResourceExhausted, "the sandbox address pool is exhausted; retry later")
		}
		if err != nil {
			return sandboxError(err)
		}
		defer func() {
			if err := att.Detach(); err != nil {
				log.Error("remove sandbox network", "error", err)
			}
		}()
		if att.NetworkError != "" {
			log.Warn("sandbox without egress", "reason", att.NetworkError)
		}
	}

	// The channel is the only way events reach the stream; its bound and the
	// blocking writers keep a fast producer from growing the executor's
	// memory: a slow client slows the program instead.
	events := make(chan *executorv1.ExecuteResponse, 16)
	budget := &outputBudget{left: prog.limits.OutputBytes, exceeded: func() { cancel(errOutputLimit) }}
	stdout := &outputWriter{events: events, budget: budget}
	stderr := &outputWriter{events: events, budget: budget, stderr: true}
	spec := sandbox.Spec{
		Image:      img,
		NodePath:   s.cfg.NodePath,
		Files:      prog.files,
		Entrypoint: prog.entrypoint,
		Args:       req.GetArgs(),
		Env:        environment(req.GetEnv(), att),
		Stdin:      req.GetStdin(),
		Limits:     prog.limits,
		Labels:     req.GetLabels(),
		Stdout:     stdout,
		Stderr:     stderr,
	}
	if att != nil {
		spec.NetNSPath = att.NetNSPath
		spec.ExtraFiles = att.ExtraFiles
	}
	started := &executorv1.ExecuteResponse{Event: &executorv1.ExecuteResponse_Started{Started: &executorv1.Started{
		ExecutionId: id,
		Image:       img.Ref,
		ImageDigest: img.Digest,
		Limits:      prog.limits.Proto(),
	}}}

	log.Info("execution starting", "image", img.Ref, "image_digest", img.Digest, "files", len(prog.files))
	s.metrics.running.Inc()
	var (
		out    sandbox.Outcome
		runErr error
	)
	go func() {
		defer close(events)
		out, runErr = s.sb.Run(runCtx, id, spec, func() { events <- started })
	}()
	var sendErr error
	send := func(ev *executorv1.ExecuteResponse) {
		if sendErr != nil {
			return // keep draining so the sandbox's writers never block
		}
		if sendErr = stream.Send(ev); sendErr != nil {
			cancel(sendErr)
		}
	}
	for events != nil {
		select {
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			send(ev)
		case nev := <-netEvents:
			send(networkEvent(nev))
		}
	}
	var netSummary decision.Summary
	if att != nil {
		// Detach first, so no event arrives after the last one is sent.
		if err := att.Detach(); err != nil {
			log.Error("remove sandbox network", "error", err)
		}
		for drained := false; !drained; {
			select {
			case nev := <-netEvents:
				send(networkEvent(nev))
			default:
				drained = true
			}
		}
		netSummary = att.Network.Summary()
	}
	s.metrics.running.Dec()
	if runErr != nil {
		log.Error("execution failed", "error", runErr)
		s.metrics.executions.WithLabelValues("error").Inc()
		return sandboxError(runErr)
	}

	res := result(out, runCtx, budget, stdout, stderr)
	if att != nil {
		res.RequestsAllowed = netSummary.Allowed
		res.RequestsBlocked = netSummary.Blocked
		res.NetworkLog = netSummary.Log
		res.NetworkError = att.NetworkError
	} else if prog.policy != nil {
		res.NetworkError = "this executor has no egress proxy configured; the sandbox had loopback only"
	}
	term := res.GetTermination().String()
	s.metrics.executions.WithLabelValues(term).Inc()
	s.metrics.duration.Observe(out.WallTime.Seconds())
	log.Info("execution ended", "termination", term, "exit_code", res.GetExitCode(), "wall_ms", out.WallTime.Milliseconds(),
		"cpu_ms", out.Usage.CPU.Milliseconds(), "peak_memory_bytes", out.Usage.PeakMemory)
	if sendErr != nil {
		return sendErr
	}
	return stream.Send(&executorv1.ExecuteResponse{Event: &executorv1.ExecuteResponse_Result{Result: res}})
}

func result(out sandbox.Outcome, runCtx context.Context, budget *outputBudget, stdout, stderr *outputWriter) *executorv1.Result {
	oom := out.Usage.OOMKills > 0
	cause := context.Cause(runCtx)
	term := executorv1.Termination_TERMINATION_EXITED
	switch {
	case out.TimedOut:
		term = executorv1.Termination_TERMINATION_TIMEOUT
	case out.Killed && errors.Is(cause, errOutputLimit):
		term = executorv1.Termination_TERMINATION_OUTPUT_LIMIT
	case out.Killed && errors.Is(cause, errShutdown):
		term = executorv1.Termination_TERMINATION_SHUTDOWN
	case oom && out.Signal == syscall.SIGKILL:
		term = executorv1.Termination_TERMINATION_OOM
	}
	var sig string
	if out.Signal != 0 {
		sig = unix.SignalName(out.Signal)
	}
	return &executorv1.Result{
		Termination:     term,
		ExitCode:        out.ExitCode,
		Signal:          sig,
		TimedOut:        out.TimedOut,
		OomKilled:       oom,
		OutputTruncated: budget.wasTruncated(),
		WallTime:        durationpb.New(out.WallTime),
		CpuTime:         durationpb.New(out.Usage.CPU),
		PeakMemoryBytes: out.Usage.PeakMemory,
		StdoutBytes:     stdout.sent,
		StderrBytes:     stderr.sent,
	}
}

// environment is the program's complete environment: the request's variables
// plus the ones the executor owns. /tmp is the only writable directory, so it
// is HOME too.
func environment(req map[string]string, att *egress.Attachment) []string {
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + sandbox.TmpDir}
	if att != nil {
		env = append(env, att.Env...)
	}
	for k, v := range req {
		env = append(env, k+"="+v)
	}
	return env
}

func networkEvent(ev *executorv1.NetworkEvent) *executorv1.ExecuteResponse {
	return &executorv1.ExecuteResponse{Event: &executorv1.ExecuteResponse_Network{Network: ev}}
}

func invalidArgument(vs []limits.Violation) error {
	st := status.New(codes.InvalidArgument, "invalid "+vs[0].Field+": "+vs[0].Reason)
	br := &errdetails.BadRequest{}
	for _, v := range vs {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Reason})
	}
	if withDetails, err := st.WithDetails(br); err == nil {
		st = withDetails
	}
	return st.Err()
}

// sandboxError turns a failure of containerd or the sandbox into a status.
func sandboxError(err error) error {
	if errdefs.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) {
		return status.Errorf(codes.Unavailable, "sandbox runtime unavailable: %v", err)
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, "execution cancelled")
	}
	return status.Errorf(codes.Internal, "sandbox failed: %v", err)
}
