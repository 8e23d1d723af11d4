// Package server serves sandpit.executor.v1.ExecutorService: it admits a
// request, resolves its image, attaches the sandbox's network, runs the
// program while one goroutine streams its events, and finishes with the
// Result or an error a client can act on.
package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/capacity"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/identity"
	"github.com/sandpit-run/sandpit/services/executor/internal/imageinspect"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/netns"
	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/executor/internal/secrets"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Sandboxes runs programs in sandboxes; *sandbox.Runtime is the real one.
type Sandboxes interface {
	ResolveImage(ctx context.Context, ref string) (sandbox.Image, error)
	// Installed says whether sandboxes can run under the runtime; its
	// error wraps sandbox.ErrRuntimeUnavailable and says why not.
	Installed(rt ociruntime.Name) error
	Run(ctx context.Context, id string, spec sandbox.Spec, started func()) (sandbox.Outcome, error)
	// Boot boots a warm sandbox; RunWarm runs a program in one.
	Boot(ctx context.Context, id string, spec sandbox.Spec) (*sandbox.Warm, error)
	RunWarm(ctx context.Context, w *sandbox.Warm, spec sandbox.Spec, started func()) (sandbox.Outcome, error)
	// Content is img's manifest, config and layers, to read.
	Content(ctx context.Context, img sandbox.Image) (v1.Image, error)
}

// Network is one sandbox's attachment to the egress path.
type Network interface {
	// Contribute adds the network's part to the sandbox's spec: the
	// namespace to join, files to mount, environment.
	Contribute(spec *sandbox.Spec)
	// Close ends the attachment; no network event is sent after it
	// returns. Calls after the first do nothing.
	Close() error
	// Release gives the sandbox's addresses back once it is gone.
	Release() error
	// Summary is what the Result reports of the execution's requests.
	Summary() decision.Summary
	// Problem says why the sandbox had no egress, or is empty.
	Problem() string
	// Observe makes f see each HTTP request's decision; f must not block.
	Observe(f func(decision.Observed))
	// UseSecrets gives the execution the secrets its requests may carry.
	UseSecrets(s []decision.Secret)
}

// Egress attaches sandboxes to the egress proxy. narrow narrows the
// operator's policy: the tenant's, the caller's token claims and the
// inline policy, nil for none.
type Egress interface {
	Attach(ctx context.Context, id string, narrow *policy.Compiled, events chan<- *executorv1.NetworkEvent) (Network, error)
	// Prepare reserves a warm sandbox's egress, for no execution yet.
	Prepare() (Reservation, error)
	// Policy is what an execution attached with narrow would be decided
	// by now: the operator's policy narrowed by it.
	Policy(narrow *policy.Compiled) *policy.Compiled
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
	// Runtimes chooses each sandbox's OCI runtime; the zero Table runs
	// every image under runc.
	Runtimes ociruntime.Table
	// Egress, when set, gives every sandbox policy-controlled egress
	// through the proxy; without it sandboxes have loopback only.
	Egress Egress
	// SendGrace bounds how long the stream may block once the sandbox has
	// ended: a caller that stops reading loses its call then, and its slot
	// is freed. Zero means DefaultSendGrace.
	SendGrace time.Duration
	// Tenancy maps callers to tenants and holds their quotas; nil runs
	// every caller under the operator's policy and its token's claims.
	Tenancy *Tenancy
	// Secrets holds the secrets requests may name; nil for none.
	Secrets *secrets.Store
	// CheckImages refuses an image that holds a class of file the
	// inspector finds (a shell, an interpreter, ...) but node and
	// ImageAllowClasses.
	CheckImages       bool
	ImageAllowClasses []imageinspect.Class
	// Pool, when set, holds warm sandboxes of DefaultImage that requests
	// which fit them run in (see fitsWarm).
	Pool Pool
}

// DefaultSendGrace is SendGrace's default.
const DefaultSendGrace = 30 * time.Second

// Causes of a sandbox being killed before its program ended.
var (
	errShutdown    = errors.New("executor is shutting down")
	errOutputLimit = errors.New("output limit reached")
)

// Event buffers. Output has a small one: writers block when it is full, so
// a slow client slows the program rather than growing the executor's
// memory. Network events come from the decision service, which must never
// block on one execution's stream: past their buffer they are dropped and
// counted (the Result's log keeps the requests).
const (
	outputBuffer  = 16
	networkBuffer = 256
)

// Service implements executorv1.ExecutorServiceServer.
type Service struct {
	executorv1.UnimplementedExecutorServiceServer

	cfg      Config
	sb       Sandboxes
	slots    *capacity.Limiter
	shutdown context.Context
	log      *slog.Logger
	metrics  *Metrics
}

// New returns the service. Executions in flight are killed, with a result
// saying so, when shutdown ends.
func New(shutdown context.Context, cfg Config, sb Sandboxes, slots *capacity.Limiter, m *Metrics, log *slog.Logger) *Service {
	return &Service{cfg: cfg, sb: sb, slots: slots, shutdown: shutdown, log: log, metrics: m}
}

// Execute runs one program; see the proto for the contract.
func (s *Service) Execute(req *executorv1.ExecuteRequest, stream grpc.ServerStreamingServer[executorv1.ExecuteResponse]) error {
	ctx := stream.Context()
	prog, err := s.admit(req)
	if err != nil {
		return s.reject(err)
	}
	ident, authed := s.cfg.Tenancy.caller(ctx)
	g, err := s.cfg.Tenancy.resolve(ident, authed, prog.policy)
	if err == nil {
		err = g.fitLimits(&prog.limits, requested(req))
	}
	if err != nil {
		return s.reject(err)
	}
	var chain *policy.Compiled // what the execution is decided by, as of now
	if s.cfg.Egress != nil {
		chain = s.cfg.Egress.Policy(g.policy)
	}
	secretsUsed, err := s.bindSecrets(req, g.ident.Tenant, chain)
	if err != nil {
		return s.reject(err)
	}
	endQuota, err := s.cfg.Tenancy.admit(g)
	if err != nil {
		return s.reject(err)
	}
	defer endQuota()
	release, err := s.acquire(ctx)
	if err != nil {
		return s.reject(err)
	}
	// handed is set once the sandbox holds the slot: it frees it when it
	// is gone, after the Result.
	handed := false
	defer func() {
		if !handed {
			release()
		}
	}()
	img, err := s.resolveImage(ctx, prog.image)
	if err == nil {
		err = s.CheckImage(ctx, img)
	}
	if err != nil {
		return s.reject(err)
	}

	w := s.takeWarm(prog, img, req, secretsUsed)
	id := sandbox.NewID()
	if w != nil {
		id = w.w.ID
		defer func() {
			if !handed {
				w.Discard()
			}
		}()
	}
	x := s.newExecution(ctx, stream, id)
	if g.ident.Tenant != "" {
		x.log = x.log.With("tenant", g.ident.Tenant, "tier", g.ident.Tier)
		x.tenant, x.tier = g.ident.Tenant, g.ident.Tier
	}
	defer x.cancel(nil)
	stop := context.AfterFunc(s.shutdown, func() { x.cancel(errShutdown) })
	defer stop()

	var net Network
	switch {
	case w == nil:
		if net, err = s.attachNetwork(ctx, x, g.policy); err != nil {
			return s.reject(err)
		}
	case w.net != nil:
		net = w.net.Bind(x.id, g.policy, x.netEvents)
	}
	mode := policyv1.Mode_MODE_ENFORCE
	if net != nil {
		mode = chain.Mode()
		net.UseSecrets(secretsUsed)
		net.Observe(x.observer(s.metrics.decisions))
		defer func() {
			if err := net.Close(); err != nil {
				x.log.Error("remove sandbox network", "error", err)
			}
		}()
	}

	spec := x.spec(s.cfg.NodePath, img, prog, req)
	spec.Env = append(spec.Env, secretEnv(secretsUsed)...)
	if net != nil {
		net.Contribute(&spec)
	}
	spec.Released = func() {
		if net != nil {
			if err := net.Release(); err != nil {
				x.log.Error("remove sandbox network", "error", err)
			}
		}
		s.metrics.running.Dec()
		release()
	}
	handed = true
	path := "cold"
	if w != nil {
		path = "warm"
	}
	s.metrics.starts.WithLabelValues(path).Inc()
	x.log.Info("execution starting", "image", img.Ref, "image_digest", img.Digest, "files", len(prog.files), "secrets", secretNames(secretsUsed), "path", path)
	s.metrics.running.Inc()
	first := started(x.id, img, prog, g.ident, mode)
	first.GetStarted().Warm = w != nil
	out, runErr := x.run(s.sb, w, spec, first)
	return s.finish(x, net, prog, out, runErr)
}

// admit checks the request's shape and whether its image may be used.
func (s *Service) admit(req *executorv1.ExecuteRequest) (program, error) {
	prog, vs := s.validate(req)
	if len(vs) > 0 {
		return prog, invalidArgument(vs)
	}
	if !s.imageAllowed(prog.image) {
		return prog, imageNotAllowed(prog.image)
	}
	prog.runtime = s.cfg.Runtimes.Choose(ociruntime.Request{Image: prog.image})
	if err := s.sb.Installed(prog.runtime); err != nil {
		return prog, runtimeUnavailable(prog.image, prog.runtime)
	}
	return prog, nil
}

func imageNotAllowed(ref string) error {
	return statusError(codes.PermissionDenied, ReasonImageNotAllowed,
		"image "+ref+" is not on the executor's image allowlist", map[string]string{"image": ref})
}

// acquire takes an execution slot, waiting in the queue if there is room.
func (s *Service) acquire(ctx context.Context) (func(), error) {
	release, err := s.slots.Acquire(ctx)
	switch {
	case errors.Is(err, capacity.ErrFull):
		return nil, statusError(codes.ResourceExhausted, ReasonSlotsFull,
			"every execution slot is busy and the wait queue is full; retry later", nil, retry())
	case err != nil:
		return nil, callerError(ctx)
	}
	return release, nil
}

func (s *Service) resolveImage(ctx context.Context, ref string) (sandbox.Image, error) {
	img, err := s.sb.ResolveImage(ctx, ref)
	switch {
	case err == nil:
		return img, nil
	case errors.Is(err, sandbox.ErrImageNotFound):
		return img, statusError(codes.NotFound, ReasonImageNotFound,
			"image "+ref+" is not in the executor's containerd", map[string]string{"image": ref})
	case errors.Is(err, sandbox.ErrImagePull) && ctx.Err() == nil:
		s.log.Warn("image pull failed", "image", ref, "error", err)
		return img, statusError(codes.Unavailable, ReasonImagePullFailed,
			"image "+ref+" is not in the executor's containerd and could not be pulled from its registry (unreachable, refused, or no such image there); the executor's log has why",
			map[string]string{"image": ref}, retry())
	default:
		return img, s.runtimeError(ctx, "", err)
	}
}

// requested says whether req sets the limit named field, as fitLimits
// names them.
func requested(req *executorv1.ExecuteRequest) func(field string) bool {
	return func(field string) bool {
		switch field {
		case limitsFieldTimeout:
			return req.GetLimits().GetTimeout().AsDuration() != 0
		case limitsFieldMemory:
			return req.GetLimits().GetMemoryBytes() != 0
		}
		return false
	}
}

// attachNetwork gives the sandbox its egress, narrowed by narrow, or nil
// without an egress proxy configured.
func (s *Service) attachNetwork(ctx context.Context, x *execution, narrow *policy.Compiled) (Network, error) {
	if s.cfg.Egress == nil {
		return nil, nil
	}
	net, err := s.cfg.Egress.Attach(ctx, x.id, narrow, x.netEvents)
	if errors.Is(err, netns.ErrPoolExhausted) {
		return nil, statusError(codes.ResourceExhausted, ReasonAddressPoolExhausted,
			"the sandbox address pool is exhausted; retry later", nil, retry())
	}
	if err != nil {
		x.log.Error("attach sandbox network", "error", err)
		return nil, statusError(codes.Internal, ReasonInternal,
			"the sandbox's network could not be set up (execution "+x.id+")", map[string]string{"execution_id": x.id})
	}
	if p := net.Problem(); p != "" {
		x.log.Warn("sandbox without egress", "reason", p)
	}
	return net, nil
}

// finish sends the Result, or turns what went wrong into a status.
func (s *Service) finish(x *execution, net Network, prog program, out sandbox.Outcome, runErr error) error {
	var netSummary decision.Summary
	netProblem := ""
	if net != nil {
		// Closed first, so no event arrives after the last one is sent.
		if err := net.Close(); err != nil {
			x.log.Error("remove sandbox network", "error", err)
		}
		netSummary = net.Summary()
		netProblem = net.Problem()
		// Counted even when no Result carries them: the loss happened.
		s.metrics.eventsDropped.Add(float64(netSummary.DroppedEvents))
		s.metrics.logOmitted.Add(float64(netSummary.LogOmitted))
	} else if prog.policy != nil {
		netProblem = "this executor has no egress proxy configured; the sandbox had loopback only"
	}
	if runErr != nil {
		s.metrics.executions.WithLabelValues(terminationError).Inc()
		x.finalSends(nil)
		return s.runtimeError(x.ctx, x.id, runErr)
	}

	res := result(out, x.ctx, x.budget, x.stdout, x.stderr)
	res.RequestsAllowed = netSummary.Allowed
	res.RequestsBlocked = netSummary.Blocked
	res.RequestsWouldBlock = netSummary.WouldBlock
	res.NetworkLog = netSummary.Log
	res.NetworkEventsDropped = netSummary.DroppedEvents
	res.NetworkLogTruncated = netSummary.LogTruncated
	res.NetworkLogOmitted = netSummary.LogOmitted
	res.NetworkLogOmittedAllowed = netSummary.LogOmittedAllowed
	res.RequestsRateLimited = netSummary.RateLimited
	res.DnsQueriesRateLimited = netSummary.DNSRateLimited
	res.RequestBytesTotal = netSummary.RequestBytes
	res.ResponseBytesTotal = netSummary.ResponseBytes
	res.PeakConcurrentConnections = netSummary.PeakConcurrent
	res.RequestsOverRate = netSummary.OverRate
	res.RequestsWithSecrets = netSummary.WithSecrets
	res.RequestsSecretMisuse = netSummary.SecretMisuse
	res.NetworkError = netProblem
	term := terminationLabel(res.GetTermination())
	s.metrics.executions.WithLabelValues(term).Inc()
	s.metrics.duration.Observe(out.WallTime.Seconds())
	x.log.Info("execution ended", "termination", term, "exit_code", res.GetExitCode(), "wall_seconds", out.WallTime.Seconds(),
		"cpu_seconds", out.Usage.CPU.Seconds(), "peak_memory_bytes", out.Usage.PeakMemory,
		"requests_allowed", netSummary.Allowed, "requests_blocked", netSummary.Blocked, "requests_would_block", netSummary.WouldBlock)
	if !x.finalSends(&executorv1.ExecuteResponse{Event: &executorv1.ExecuteResponse_Result{Result: res}}) {
		x.log.Warn("the caller stopped reading; ending the call", "send_grace_seconds", x.sendGrace.Seconds())
		s.metrics.rejected.WithLabelValues(strings.ToLower(ReasonCallerNotReading)).Inc()
		return statusError(codes.Aborted, ReasonCallerNotReading,
			"the call did not read its stream for "+x.sendGrace.String()+" after the program ended, so the executor ended it", nil)
	}
	if x.sendErr != nil {
		return s.streamError(x)
	}
	return nil
}

// streamError is the status when the stream to the caller broke.
func (s *Service) streamError(x *execution) error {
	if x.stream.Context().Err() != nil {
		return callerError(x.stream.Context())
	}
	x.log.Warn("send to caller failed", "error", x.sendErr)
	return statusError(codes.Unavailable, ReasonInternal, "the event stream to the caller broke", nil)
}

// runtimeError maps a failure of containerd or the sandbox. The caller's
// own deadline or cancel wins; the internal text is logged, not sent.
func (s *Service) runtimeError(ctx context.Context, id string, err error) error {
	if ctx.Err() != nil {
		return callerError(ctx)
	}
	log := s.log
	meta := map[string]string{}
	if id != "" {
		log = log.With("execution_id", id)
		meta["execution_id"] = id
	}
	log.Error("execution failed", "error", err)
	switch {
	case errors.Is(err, sandbox.ErrContainerdUnavailable) || errdefs.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded):
		return statusError(codes.Unavailable, ReasonContainerdUnavailable,
			"the executor lost its connection to containerd; the program may have run in part; retry once the executor is healthy", meta, retry())
	case errors.Is(err, sandbox.ErrRuntimeUnavailable):
		return statusError(codes.FailedPrecondition, ReasonRuntimeUnavailable,
			"the sandbox's OCI runtime is not installed on this executor", meta)
	case errors.Is(err, sandbox.ErrWarmGone):
		return statusError(codes.Unavailable, ReasonInternal,
			"the sandbox booted for this execution ended before the program started; nothing ran; retry", meta, retry())
	case errors.Is(err, sandbox.ErrStuck):
		return statusError(codes.Internal, ReasonSandboxStuck,
			"the sandbox did not end after it was killed; it has been left for the executor to remove", meta)
	default:
		return statusError(codes.Internal, ReasonInternal, "the sandbox failed; the executor's log has the details", meta)
	}
}

// reject counts a refused execution by the reason of its status.
func (s *Service) reject(err error) error {
	s.metrics.rejected.WithLabelValues(strings.ToLower(reasonOf(err))).Inc()
	return err
}

// started is the first event of the stream.
func started(id string, img sandbox.Image, prog program, ident identity.Identity, mode policyv1.Mode) *executorv1.ExecuteResponse {
	return &executorv1.ExecuteResponse{Event: &executorv1.ExecuteResponse_Started{Started: &executorv1.Started{
		ExecutionId: id,
		Image:       img.Ref,
		ImageDigest: img.Digest,
		Limits:      prog.limits.Proto(),
		Tenant:      ident.Tenant,
		Tier:        ident.Tier,
		PolicyMode:  mode,
	}}}
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

// terminationError is the termination label of an execution whose sandbox
// failed: it has no Result, so no Termination.
const terminationError = "error"

// terminationLabel is the metric and log vocabulary of a termination:
// exited, timeout, oom, output_limit, shutdown.
func terminationLabel(t executorv1.Termination) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "TERMINATION_"))
}
