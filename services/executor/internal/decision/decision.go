// Package decision serves sandpit.policy.v1.PolicyDecisionService to the
// egress proxy: it maps a request's source address to the execution that
// owns it, decides by that execution's policy, and records what happened in
// the execution's network log and live events.
package decision

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy"
)

// maxLog bounds an execution's network log; past it requests are still
// decided and counted but no longer logged.
const maxLog = 10000

// maxOutstanding bounds the allowed requests a stream waits to hear the
// outcome of; a proxy that never reports cannot grow the executor's memory.
const maxOutstanding = 65536

// Execution is the network state of one running execution.
type Execution struct {
	id     string
	policy *policy.Compiled
	events chan<- *executorv1.NetworkEvent

	mu       sync.Mutex
	nextID   uint64
	requests uint32
	allowed  uint32
	blocked  uint32
	log      []*executorv1.NetworkLogEntry
	dropped  int
}

// NewExecution returns the network state of execution id under p. Live
// events go to events without blocking: when it is full they are dropped
// (the result's network log still has every request).
func NewExecution(id string, p *policy.Compiled, events chan<- *executorv1.NetworkEvent) *Execution {
	return &Execution{id: id, policy: p, events: events}
}

// Summary is what the result reports of the execution's network use.
type Summary struct {
	Allowed, Blocked uint32
	Log              []*executorv1.NetworkLogEntry
	// DroppedEvents counts live events not delivered because the stream
	// was behind.
	DroppedEvents int
}

// Summary returns the counts and log so far.
func (e *Execution) Summary() Summary {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Summary{Allowed: e.allowed, Blocked: e.blocked, Log: append([]*executorv1.NetworkLogEntry(nil), e.log...), DroppedEvents: e.dropped}
}

func (e *Execution) emit(ev *executorv1.NetworkEvent) {
	select {
	case e.events <- ev:
	default:
		e.mu.Lock()
		e.dropped++
		e.mu.Unlock()
	}
}

// Registry maps sandbox addresses to executions and counts the proxies
// connected.
type Registry struct {
	mu      sync.RWMutex
	byIP    map[netip.Addr]*Execution
	streams atomic.Int32
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{byIP: map[netip.Addr]*Execution{}}
}

// Register makes ip belong to e until the returned func is called.
func (r *Registry) Register(ip netip.Addr, e *Execution) (unregister func()) {
	r.mu.Lock()
	r.byIP[ip] = e
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		if r.byIP[ip] == e {
			delete(r.byIP, ip)
		}
		r.mu.Unlock()
	}
}

func (r *Registry) lookup(ip string) *Execution {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.byIP[a.Unmap()]
}

// Connected reports whether a proxy holds a Decide stream.
func (r *Registry) Connected() bool { return r.streams.Load() > 0 }

// Service implements policyv1.PolicyDecisionServiceServer.
type Service struct {
	policyv1.UnimplementedPolicyDecisionServiceServer
	reg *Registry
	log *slog.Logger
}

// NewService returns the decision service over reg.
func NewService(reg *Registry, log *slog.Logger) *Service {
	return &Service{reg: reg, log: log}
}

// pending is an allowed request awaiting its outcome.
type pending struct {
	exec  *Execution
	id    uint64 // the execution's request id
	entry *executorv1.NetworkLogEntry
}

// Decide answers the proxy's questions in order on one goroutine, which is
// also the only sender on the stream.
func (s *Service) Decide(stream grpc.BidiStreamingServer[policyv1.DecideRequest, policyv1.DecideResponse]) error {
	s.reg.streams.Add(1)
	defer s.reg.streams.Add(-1)
	s.log.Info("egress proxy connected")
	defer s.log.Info("egress proxy disconnected")
	outstanding := map[uint64]pending{}
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		switch k := req.GetKind().(type) {
		case *policyv1.DecideRequest_Http:
			resp, p := s.decideHTTP(req.GetId(), k.Http)
			if p.exec != nil && resp.GetDecision() != policyv1.Decision_DECISION_DENY && len(outstanding) < maxOutstanding {
				outstanding[req.GetId()] = p
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		case *policyv1.DecideRequest_Dns:
			if err := stream.Send(s.decideDNS(req.GetId(), k.Dns)); err != nil {
				return err
			}
		case *policyv1.DecideRequest_Outcome:
			if p, ok := outstanding[k.Outcome.GetRequestId()]; ok {
				delete(outstanding, k.Outcome.GetRequestId())
				p.exec.outcome(p, k.Outcome)
			}
		case *policyv1.DecideRequest_Refusal:
			if e := s.reg.lookup(k.Refusal.GetSourceIp()); e != nil {
				e.refusal(k.Refusal)
			}
		}
	}
}

func (s *Service) decideHTTP(id uint64, r *policyv1.HttpRequest) (*policyv1.DecideResponse, pending) {
	e := s.reg.lookup(r.GetSourceIp())
	if e == nil {
		return &policyv1.DecideResponse{Id: id, Decision: policyv1.Decision_DECISION_DENY, RuleId: "no-execution",
			Reason: "no running execution owns source address " + r.GetSourceIp()}, pending{}
	}
	d := e.decide(r)
	now := time.Now()
	url := redactedURL(r)

	e.mu.Lock()
	e.nextID++
	reqID := e.nextID
	blocked := !d.Forward()
	if blocked {
		e.blocked++
	} else {
		e.allowed++
	}
	entry := &executorv1.NetworkLogEntry{
		Timestamp: timestamppb.New(now),
		Method:    r.GetMethod(),
		Url:       url,
		Hostname:  r.GetHost(),
		Blocked:   blocked,
		RuleId:    d.RuleID,
		Decision:  d.Decision,
	}
	if blocked {
		entry.StatusCode = 403
	}
	if d.Decision != policyv1.Decision_DECISION_ALLOW {
		entry.Reason = d.Reason
	}
	if len(e.log) < maxLog {
		e.log = append(e.log, entry)
	}
	e.mu.Unlock()

	e.emit(&executorv1.NetworkEvent{
		Kind:      executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST,
		RequestId: reqID,
		Time:      timestamppb.New(now),
		Method:    r.GetMethod(),
		Url:       url,
		Host:      r.GetHost(),
		Decision:  d.Decision,
		RuleId:    d.RuleID,
		Reason:    d.Reason,
	})
	resp := &policyv1.DecideResponse{Id: id, Decision: d.Decision, RuleId: d.RuleID, Reason: d.Reason, ExecutionId: e.id}
	if !blocked {
		resp.MaxRequestBytes = e.policy.Limits().MaxRequestBytes
	}
	return resp, pending{exec: e, id: reqID, entry: entry}
}

// decide applies the proxy's own verdict, the execution's limits and its
// policy, in that order.
func (e *Execution) decide(r *policyv1.HttpRequest) policy.Decision {
	block := func(rule, reason string) policy.Decision {
		return policy.Decision{Action: policyv1.Action_ACTION_DENY, Decision: policyv1.Decision_DECISION_DENY, RuleID: rule, Reason: reason}
	}
	// A request the proxy found malformed or deceptive is blocked even in
	// audit mode: forwarding it would send something other than what was
	// checked.
	if v := r.GetViolation(); v != "" {
		return block("proxy", v)
	}
	limits := e.policy.Limits()
	e.mu.Lock()
	e.requests++
	n := e.requests
	e.mu.Unlock()
	if limits.MaxRequests > 0 && n > limits.MaxRequests {
		return block("limits.max_requests", fmt.Sprintf("the execution may make %d requests", limits.MaxRequests))
	}
	if limits.MaxRequestBytes > 0 && r.GetContentLength() > 0 && uint64(r.GetContentLength()) > limits.MaxRequestBytes {
		return block("limits.max_request_bytes", fmt.Sprintf("request body of %d bytes is above the limit of %d", r.GetContentLength(), limits.MaxRequestBytes))
	}
	return e.policy.Decide(policy.Request{Method: r.GetMethod(), Host: r.GetHost(), Path: r.GetPath(), WebSocket: r.GetWebsocket()})
}

func (e *Execution) outcome(p pending, o *policyv1.Outcome) {
	e.mu.Lock()
	p.entry.StatusCode = o.GetStatusCode()
	e.mu.Unlock()
	e.emit(&executorv1.NetworkEvent{
		Kind:          executorv1.NetworkEventKind_NETWORK_EVENT_KIND_OUTCOME,
		RequestId:     p.id,
		Time:          timestamppb.Now(),
		Method:        p.entry.GetMethod(),
		Url:           p.entry.GetUrl(),
		Host:          p.entry.GetHostname(),
		Decision:      p.entry.GetDecision(),
		RuleId:        p.entry.GetRuleId(),
		StatusCode:    o.GetStatusCode(),
		BytesSent:     o.GetBytesSent(),
		BytesReceived: o.GetBytesReceived(),
		Duration:      o.GetDuration(),
		Error:         o.GetError(),
	})
}

func (s *Service) decideDNS(id uint64, q *policyv1.DnsQuery) *policyv1.DecideResponse {
	e := s.reg.lookup(q.GetSourceIp())
	if e == nil {
		return &policyv1.DecideResponse{Id: id, Decision: policyv1.Decision_DECISION_DENY, RuleId: "no-execution",
			Reason: "no running execution owns source address " + q.GetSourceIp()}
	}
	d, reason := policyv1.Decision_DECISION_DENY, "no rule of the policy could allow a request to "+q.GetName()
	if e.policy.CouldAllowHost(q.GetName()) {
		d, reason = policyv1.Decision_DECISION_ALLOW, ""
	}
	e.emit(&executorv1.NetworkEvent{
		Kind:     executorv1.NetworkEventKind_NETWORK_EVENT_KIND_DNS,
		Time:     timestamppb.Now(),
		Method:   q.GetType(),
		Url:      q.GetName(),
		Host:     q.GetName(),
		Decision: d,
		RuleId:   "dns",
		Reason:   reason,
	})
	return &policyv1.DecideResponse{Id: id, Decision: d, RuleId: "dns", Reason: reason, ExecutionId: e.id}
}

func (e *Execution) refusal(r *policyv1.Refusal) {
	e.emit(&executorv1.NetworkEvent{
		Kind:     executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED,
		Time:     timestamppb.Now(),
		Url:      r.GetDestination(),
		Host:     r.GetDestination(),
		Decision: policyv1.Decision_DECISION_DENY,
		RuleId:   "proxy",
		Reason:   r.GetReason(),
	})
}

// redactedURL rebuilds the request's URL from what the proxy sent, whose
// query is already redacted.
func redactedURL(r *policyv1.HttpRequest) string {
	host := r.GetHost()
	if p := r.GetPort(); p != 0 && !(r.GetScheme() == "https" && p == 443) && !(r.GetScheme() == "http" && p == 80) {
		host += ":" + strconv.Itoa(int(p))
	}
	u := r.GetScheme() + "://" + host + r.GetPath()
	if q := r.GetQuery(); q != "" {
		u += "?" + q
	}
	return u
}
