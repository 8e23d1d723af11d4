package server

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
)

// execution is one admitted Execute call while its sandbox runs. Its events
// channel is never closed: writers give up when done is closed, so nothing
// containerd does (an output copy that outlives Run when containerd is
// lost) can send on a closed channel.
type execution struct {
	id     string
	log    *slog.Logger
	stream grpc.ServerStreamingServer[executorv1.ExecuteResponse]
	// ctx is the sandbox's: it ends with the call, at shutdown or when the
	// output limit is passed, with the cause.
	ctx    context.Context
	cancel context.CancelCauseFunc

	events    chan *executorv1.ExecuteResponse
	netEvents chan *executorv1.NetworkEvent
	// done is closed once the pump takes no more events.
	done chan struct{}

	budget         *outputBudget
	stdout, stderr *outputWriter
	// sendErr is the first failed Send; the pump's alone until run returns.
	sendErr error
	// sendGrace bounds how long sends may block once the sandbox ended.
	sendGrace time.Duration
	// stalled is set when the caller stopped reading: a send is still
	// blocked and nothing else may be sent.
	stalled bool

	// tenant and tier are the caller's, stamped on its network events.
	tenant, tier string
	// wouldBlock counts the would-block decisions (audit mode).
	wouldBlock atomic.Uint32
}

func (s *Service) newExecution(ctx context.Context, stream grpc.ServerStreamingServer[executorv1.ExecuteResponse], id string) *execution {
	runCtx, cancel := context.WithCancelCause(ctx)
	x := &execution{
		id:        id,
		log:       s.log.With("execution_id", id),
		stream:    stream,
		ctx:       runCtx,
		cancel:    cancel,
		events:    make(chan *executorv1.ExecuteResponse, outputBuffer),
		netEvents: make(chan *executorv1.NetworkEvent, networkBuffer),
		done:      make(chan struct{}),
		sendGrace: s.cfg.SendGrace,
	}
	if x.sendGrace == 0 {
		x.sendGrace = DefaultSendGrace
	}
	return x
}

// spec is the sandbox spec of prog, its output wired to the stream.
func (x *execution) spec(nodePath string, img sandbox.Image, prog program, req *executorv1.ExecuteRequest) sandbox.Spec {
	x.budget = &outputBudget{left: prog.limits.OutputBytes, exceeded: func() { x.cancel(errOutputLimit) }}
	x.stdout = &outputWriter{x: x, budget: x.budget}
	x.stderr = &outputWriter{x: x, budget: x.budget, stderr: true}
	return sandbox.Spec{
		Image:      img,
		NodePath:   nodePath,
		Files:      prog.files,
		Entrypoint: prog.entrypoint,
		Args:       req.GetArgs(),
		Env:        environment(req.GetEnv()),
		Stdin:      req.GetStdin(),
		Limits:     prog.limits,
		Labels:     req.GetLabels(),
		Runtime:    prog.runtime,
		Stdout:     x.stdout,
		Stderr:     x.stderr,
	}
}

// run runs the sandbox, w when set, while the pump, the stream's only sender, sends its
// events. It returns when Run has and every event Run produced was sent,
// or, when the caller stops reading, at most sendGrace after Run: the pump
// is then left blocked in Send, which returns once the handler has ended
// the call (x.stalled says so, and nothing else may send).
func (x *execution) run(sb Sandboxes, w *warm, spec sandbox.Spec, first *executorv1.ExecuteResponse) (sandbox.Outcome, error) {
	var (
		out sandbox.Outcome
		err error
	)
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		if w != nil {
			out, err = sb.RunWarm(x.ctx, w.w, spec, func() { x.emit(first) })
			return
		}
		out, err = sb.Run(x.ctx, x.id, spec, func() { x.emit(first) })
	}()
	x.bounded(runDone, func() { x.pump(runDone) })
	return out, err
}

// bounded runs sends on a goroutine of its own and waits for it; once after
// has happened it waits at most sendGrace more, then marks the execution
// stalled. Calls are sequential, so one goroutine sends at a time.
func (x *execution) bounded(after <-chan struct{}, sends func()) {
	if x.stalled {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sends()
	}()
	select {
	case <-done:
		return
	case <-after:
	}
	t := time.NewTimer(x.sendGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		x.stalled = true
	}
}

// pump sends output and network events until Run is done, then what Run
// left in the channel; then it closes done, so late writers give up.
func (x *execution) pump(runDone <-chan struct{}) {
	defer close(x.done)
	for {
		select {
		case ev := <-x.events:
			x.send(ev)
		case nev := <-x.netEvents:
			x.send(x.networkEvent(nev))
		case <-runDone:
			// Output Run drained is in the channel already; a writer
			// still blocked on it is taken here too.
			for {
				select {
				case ev := <-x.events:
					x.send(ev)
				default:
					return
				}
			}
		}
	}
}

// emit queues ev for the stream, blocking while the buffer is full; it
// reports false once the pump takes no more.
func (x *execution) emit(ev *executorv1.ExecuteResponse) bool {
	select {
	case x.events <- ev:
		return true
	case <-x.done:
		return false
	}
}

// send sends ev unless an earlier send failed; on failure the sandbox is
// stopped, and the pump keeps draining so its writers never block.
func (x *execution) send(ev *executorv1.ExecuteResponse) {
	if x.sendErr != nil {
		return
	}
	if x.sendErr = x.stream.Send(ev); x.sendErr != nil {
		x.cancel(x.sendErr)
	}
}

// drainNetwork sends the network events still buffered; call it after the
// network was closed.
func (x *execution) drainNetwork() {
	for {
		select {
		case nev := <-x.netEvents:
			x.send(x.networkEvent(nev))
		default:
			return
		}
	}
}

// finalSends sends the remaining network events and then last, bounded by
// sendGrace; it reports false when the caller stopped reading.
func (x *execution) finalSends(last *executorv1.ExecuteResponse) bool {
	now := make(chan struct{})
	close(now)
	x.bounded(now, func() {
		x.drainNetwork()
		if last != nil {
			x.send(last)
		}
	})
	return !x.stalled
}

// environment is the program's environment: the request's variables plus
// the ones the executor owns. /tmp is the only writable directory, so it is
// HOME too.
func environment(req map[string]string) []string {
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + sandbox.TmpDir}
	for k, v := range req {
		env = append(env, k+"="+v)
	}
	return env
}

func (x *execution) networkEvent(ev *executorv1.NetworkEvent) *executorv1.ExecuteResponse {
	ev.Tenant, ev.Tier = x.tenant, x.tier
	return &executorv1.ExecuteResponse{Event: &executorv1.ExecuteResponse_Network{Network: ev}}
}

// maxWouldBlockLogs bounds the would-block decisions an execution logs one
// by one; the rest are counted in its "execution ended" line.
const maxWouldBlockLogs = 20

// observer counts each of the execution's decisions in c, and logs its
// would-block ones (audit mode): what a tightened policy would break.
func (x *execution) observer(c *decisionCounter) func(decision.Observed) {
	return func(o decision.Observed) {
		c.observe(x.tenant, o)
		if o.Decision != policyv1.Decision_DECISION_WOULD_BLOCK {
			return
		}
		if n := x.wouldBlock.Add(1); n <= maxWouldBlockLogs {
			x.log.Info("request would be blocked (audit mode)", "host", o.Host, "rule", o.RuleID, "source", o.Source)
		}
	}
}
