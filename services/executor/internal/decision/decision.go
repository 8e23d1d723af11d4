// Package decision serves sandpit.egress.v1.DecisionService to the egress
// proxy: it keeps what the connected proxy said in its hello (the CA every
// sandbox must trust), maps a request's source address to the execution
// that owns it, decides by that execution's policy, and records what
// happened in the execution's network log and live events.
package decision

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/bound"
	"github.com/sandpit-run/sandpit/services/policy"
)

// MaxMessageBytes bounds every message of a Decide stream. The decision
// listener receives no larger message (grpc.MaxRecvMsgSize), and the
// proxy's client sends none (its decide.MaxMessageBytes is the same
// number, documented in egress.proto): one request can never close the
// stream every sandbox's egress depends on.
const MaxMessageBytes = 64 << 10

// Bounds of what the executor sends back, as egress.proto documents them.
const (
	maxRuleIDBytes = 128
	maxReasonBytes = 1 << 10
)

// Bounds of an execution's network log: every request is decided and
// counted, but the log keeps at most maxLogEntries entries, of at most
// maxLogBytes together, so that the Result it goes into stays well under
// a client's default 4 MiB receive limit whatever the program does; half
// of each is kept for allowed requests (allowedReserveEntries). The
// requests past either bound are counted (Summary.LogOmitted).
const (
	maxLogEntries = 10000
	maxLogBytes   = 3 << 20
	// entryOverhead is what an entry costs beyond its size when logged:
	// its framing in the Result and the status code an outcome adds.
	entryOverhead = 16
)

// Bounds of the strings of every network event and log entry, as
// executor.proto documents them; longer ones are cut and end in
// bound.Marker.
const (
	maxURLBytes       = 2 << 10
	maxLogReasonBytes = 512
	maxMethodBytes    = 32
	maxHostBytes      = 253
)

// maxOutstanding bounds the allowed requests a stream waits to hear the
// outcome of; a proxy that never reports cannot grow the executor's memory.
const maxOutstanding = 65536

// outcomeLost is the reason, in its log entry and its outcome event, of an
// allowed request whose outcome can no longer arrive: the proxy reports
// outcomes only on the stream the request was decided on.
const outcomeLost = "no outcome: the egress proxy's decision stream closed before the proxy reported one (the proxy went away mid-request)"

// Execution is the network state of one running execution.
type Execution struct {
	id string
	// policy returns the policy in force now: a policy reload applies to
	// the next request of a running execution.
	policy func() *policy.Compiled
	events chan<- *executorv1.NetworkEvent
	// observe, when set, is told of every HTTP request decided, outside
	// the lock (see Observe).
	observe atomic.Pointer[func(Observed)]

	mu         sync.Mutex
	nextID     uint64
	requests   uint32
	allowed    uint32
	blocked    uint32
	wouldBlock uint32 // of allowed, audit-mode would-blocks
	log        []*executorv1.NetworkLogEntry
	logBytes   int
	omitted    uint32 // requests left out of the log
	// Of the log: what allowed entries take, and the omitted requests
	// that were allowed; the global budget entries count against.
	allowedEntries, allowedBytes int
	omittedAllowed               uint32
	budget                       *LogBudget
	released                     bool
	cut                          bool // a url or reason in the log was cut
	dropped                      uint32
	// Requests (counted in blocked too) and DNS queries the proxy refused
	// by its per-source limits.
	rateLimited, dnsRateLimited uint32
	use                         usage // see admit
	// secrets are the execution's, by placeholder id (UseSecrets, set
	// once); withSecrets and secretMisuse count the requests they were
	// swapped into and the ones refused for misuse.
	secrets                   map[string]Secret
	withSecrets, secretMisuse uint32

	dnsQueries atomic.Uint32 // see overDNSBudget
	// heard is when a question or report of the execution last came, in
	// Unix nanoseconds; 0 before the first (see Settle).
	heard atomic.Int64
}

// NewExecution returns the network state of execution id under p. Live
// events go to events without blocking: when it is full they are dropped
// and counted (the result's network log still has the requests, within
// its bounds).
func NewExecution(id string, p *policy.Compiled, events chan<- *executorv1.NetworkEvent) *Execution {
	return NewLiveExecution(id, func() *policy.Compiled { return p }, events)
}

// NewLiveExecution is NewExecution under the policy current returns at each
// decision; it must be cheap and safe for concurrent use.
func NewLiveExecution(id string, current func() *policy.Compiled, events chan<- *executorv1.NetworkEvent) *Execution {
	return &Execution{id: id, policy: current, events: events}
}

// Observed is one HTTP request's decision, as Observe reports it. Host is
// the canonical host the request named, bounded like the log's.
type Observed struct {
	Host, RuleID, Source string
	Decision             policyv1.Decision
}

// Observe makes the execution call f with each HTTP request's decision,
// from the decision service's goroutine: f must be quick and must not
// block.
func (e *Execution) Observe(f func(Observed)) { e.observe.Store(&f) }

// Summary is what the result reports of the execution's network use; its
// fields go to the Result fields of the same names.
type Summary struct {
	// Allowed and Blocked count every HTTP request decided; WouldBlock
	// counts the allowed ones an audit-mode policy would have blocked.
	Allowed, Blocked, WouldBlock uint32
	// Log is the network log, within its bounds.
	Log []*executorv1.NetworkLogEntry
	// LogOmitted counts requests left out of Log by its bounds or the
	// executor's global one, LogOmittedAllowed those of them that were
	// allowed; LogTruncated is set when any was, or a url or reason in
	// Log was cut.
	LogOmitted        uint32
	LogOmittedAllowed uint32
	LogTruncated      bool
	// DroppedEvents counts live events not delivered because the stream
	// was behind.
	DroppedEvents uint32
	// RateLimited counts the requests of Blocked the proxy refused by its
	// per-source limits without asking (not in Log), DNSRateLimited the
	// DNS queries.
	RateLimited, DNSRateLimited uint32
	// RequestBytes and ResponseBytes are the body bytes the proxy sent
	// upstream and returned to the sandbox, as its outcomes reported;
	// PeakConcurrent the most upstream exchanges open at once; OverRate
	// the requests of Blocked refused by a rule's rate or by
	// max_concurrent_connections.
	RequestBytes, ResponseBytes uint64
	PeakConcurrent, OverRate    uint32
	// WithSecrets counts the allowed requests a secret was placed into,
	// SecretMisuse the blocked ones that carried a placeholder where its
	// binding does not let it go.
	WithSecrets, SecretMisuse uint32
}

// Summary returns the counts and a copy of the log so far: an outcome
// arriving later does not change what was returned.
func (e *Execution) Summary() Summary {
	e.mu.Lock()
	defer e.mu.Unlock()
	log := make([]*executorv1.NetworkLogEntry, len(e.log))
	for i, l := range e.log {
		log[i] = proto.CloneOf(l)
	}
	return Summary{
		Allowed:           e.allowed,
		Blocked:           e.blocked,
		WouldBlock:        e.wouldBlock,
		Log:               log,
		LogOmitted:        e.omitted,
		LogOmittedAllowed: e.omittedAllowed,
		LogTruncated:      e.omitted > 0 || e.cut,
		DroppedEvents:     e.dropped,
		RateLimited:       e.rateLimited,
		DNSRateLimited:    e.dnsRateLimited,
		RequestBytes:      e.use.requestBytes,
		ResponseBytes:     e.use.responseBytes,
		PeakConcurrent:    e.use.peakOpen,
		OverRate:          e.use.overRate,
		WithSecrets:       e.withSecrets,
		SecretMisuse:      e.secretMisuse,
	}
}

// record appends entry to the log if it fits (logRoom) and reports
// whether it did; e.mu is held. cut says whether its url or reason was
// shortened.
func (e *Execution) record(entry *executorv1.NetworkLogEntry, cut bool) bool {
	size := proto.Size(entry) + entryOverhead
	if !e.logRoom(size, entry.GetBlocked()) {
		e.omitted++
		if !entry.GetBlocked() {
			e.omittedAllowed++
		}
		return false
	}
	e.log = append(e.log, entry)
	e.logBytes += size
	if !entry.GetBlocked() {
		e.allowedEntries++
		e.allowedBytes += size
	}
	e.cut = e.cut || cut
	return true
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

// Registry maps sandbox addresses to executions and holds what the
// connected proxies said in their hellos.
type Registry struct {
	mu      sync.RWMutex
	byIP    map[netip.Addr]*Execution
	proxies []*Proxy // one per open stream that said hello, oldest first
	// releases holds, for each of proxies, the addresses whose
	// executions ended, for its stream to send as Release notices.
	releases map[*Proxy]chan netip.Addr
	expect   Ports
}

// releaseQueue bounds the Release notices waiting for one stream's
// sender; past it one is dropped (the sandbox's own close still ends its
// connections, only later).
const releaseQueue = 1024

// Ports are where the executor's nftables send sandbox traffic on this
// host; a proxy whose hello names other ports is warned about.
type Ports struct {
	Transparent, DNS uint16
}

// Proxy is what a connected proxy said in its hello.
type Proxy struct {
	// Version is the proxy's own.
	Version string
	// CAPEM holds the certificates of the CA the proxy mints its TLS
	// leaves from, PEM, as checked; CASHA256 is the first one's
	// fingerprint (hex).
	CAPEM    []byte
	CASHA256 string
	// TransparentAddress and DNSAddress are the proxy's listeners.
	TransparentAddress, DNSAddress string
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{byIP: map[netip.Addr]*Execution{}, releases: map[*Proxy]chan netip.Addr{}}
}

// ExpectPorts records where nftables redirects sandbox TCP and DNS, so
// that a proxy listening elsewhere is noticed when it says hello.
func (r *Registry) ExpectPorts(p Ports) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expect = p
}

// Register makes ip belong to e until the returned func is called; then
// every connected proxy is told to release ip, closing what the sandbox
// still has open.
func (r *Registry) Register(ip netip.Addr, e *Execution) (unregister func()) {
	r.mu.Lock()
	r.byIP[ip] = e
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.byIP[ip] != e {
			return
		}
		delete(r.byIP, ip)
		for _, ch := range r.releases {
			select {
			case ch <- ip:
			default:
			}
		}
	}
}

func (r *Registry) lookup(ip string) *Execution {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return nil
	}
	r.mu.RLock()
	e := r.byIP[a.Unmap()]
	r.mu.RUnlock()
	if e != nil {
		e.heard.Store(time.Now().UnixNano())
	}
	return e
}

// Settle waits, at most bound, until no exchange of the execution awaits
// its outcome and nothing of it was heard for quiet: the proxy reports an
// outcome when the exchange ends and refusals in batches, which may come
// after the sandbox has exited. An execution that made no request returns
// at once.
func (e *Execution) Settle(quiet, bound time.Duration) {
	deadline := time.Now().Add(bound)
	for {
		e.mu.Lock()
		open := e.use.open
		e.mu.Unlock()
		heard := e.heard.Load()
		if heard == 0 || (open == 0 && time.Since(time.Unix(0, heard)) >= quiet) || time.Now().After(deadline) {
			return
		}
		time.Sleep(quiet / 10)
	}
}

// Connected reports whether a proxy holds a Decide stream and has said
// hello on it.
func (r *Registry) Connected() bool { return r.streams() > 0 }

// streams counts the Decide streams that said hello.
func (r *Registry) streams() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.proxies)
}

// Proxy returns the hello of the proxy that connected last among those
// still connected: a restarted proxy's new CA wins as soon as it says
// hello, even while the old stream has not noticed it is gone.
func (r *Registry) Proxy() (Proxy, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if len(r.proxies) == 0 {
		return Proxy{}, false
	}
	return *r.proxies[len(r.proxies)-1], true
}

// connect records p's stream; release receives the addresses to send
// Release notices for.
func (r *Registry) connect(p *Proxy) (release <-chan netip.Addr, disconnect func()) {
	ch := make(chan netip.Addr, releaseQueue)
	r.mu.Lock()
	r.proxies = append(r.proxies, p)
	r.releases[p] = ch
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.releases, p)
		for i, q := range r.proxies {
			if q == p {
				r.proxies = append(r.proxies[:i], r.proxies[i+1:]...)
				return
			}
		}
	}
}

// Service implements egressv1.DecisionServiceServer.
type Service struct {
	egressv1.UnimplementedDecisionServiceServer
	reg     *Registry
	metrics *metrics
	log     *slog.Logger
}

// NewService returns the decision service over reg, its metrics registered
// on metricsReg (nil for none). Its server must receive messages of at
// most MaxMessageBytes.
func NewService(reg *Registry, metricsReg prometheus.Registerer, log *slog.Logger) *Service {
	return &Service{reg: reg, metrics: newMetrics(metricsReg, reg), log: log}
}

// pending is an allowed request awaiting its outcome.
type pending struct {
	exec   *Execution
	id     uint64 // the execution's request id
	entry  *executorv1.NetworkLogEntry
	logged bool  // entry is in the execution's log
	grant  grant // what it holds of the execution's budgets
}

// Decide takes the proxy's hello, then answers its questions in order on
// one goroutine, which is also the only sender on the stream.
func (s *Service) Decide(stream grpc.BidiStreamingServer[egressv1.DecideRequest, egressv1.DecideResponse]) error {
	first, err := stream.Recv()
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return err
	}
	if first.GetHello() == nil {
		return status.Error(codes.InvalidArgument, "the first message of a Decide stream must be a hello")
	}
	px, err := checkHello(first.GetHello())
	if err != nil {
		return status.Error(codes.InvalidArgument, "hello: "+err.Error())
	}
	log := s.log.With("proxy_version", px.Version, "ca_sha256", px.CASHA256)
	s.warnPorts(log, px)
	release, disconnect := s.reg.connect(px)
	defer disconnect()
	log.Info("egress proxy connected", "transparent_address", px.TransparentAddress, "dns_address", px.DNSAddress)
	defer log.Info("egress proxy disconnected")

	// This goroutine stays the only sender; a receiver feeds it, so that
	// it can also send Release notices while the proxy says nothing. The
	// receiver ends with the stream, whose context ends when Decide
	// returns.
	reqs := make(chan *egressv1.DecideRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	outstanding := map[uint64]pending{}
	// However the stream ends, the allowed requests still waiting for
	// their outcome say so, instead of looking as if they were in flight.
	defer func() {
		for _, p := range outstanding {
			p.exec.lost(p)
		}
	}()
	for {
		var req *egressv1.DecideRequest
		select {
		case ip := <-release:
			if err := stream.Send(&egressv1.DecideResponse{Release: &egressv1.Release{SourceIp: ip.String()}}); err != nil {
				return err
			}
			continue
		case err := <-recvErr:
			if err == io.EOF {
				return nil
			}
			return err
		case req = <-reqs:
		}
		switch k := req.GetKind().(type) {
		case *egressv1.DecideRequest_Hello:
			return status.Error(codes.InvalidArgument, "hello is the first message of a Decide stream and only the first")
		case *egressv1.DecideRequest_Question:
			resp, p := s.answer(k.Question)
			if p.exec != nil && resp.GetDecision() != policyv1.Decision_DECISION_DENY {
				if len(outstanding) < maxOutstanding {
					outstanding[k.Question.GetId()] = p
				} else {
					// Its outcome will not be heard: it holds nothing.
					p.exec.settle(p.grant, p.grant.reserved, 0)
				}
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		case *egressv1.DecideRequest_Report:
			switch r := k.Report.GetKind().(type) {
			case *egressv1.Report_Outcome:
				if p, ok := outstanding[r.Outcome.GetQuestionId()]; ok {
					delete(outstanding, r.Outcome.GetQuestionId())
					p.exec.outcome(p, r.Outcome)
				}
			case *egressv1.Report_Refusal:
				if e := s.reg.lookup(r.Refusal.GetSourceIp()); e != nil {
					e.refusal(r.Refusal)
				}
			}
		}
	}
}

// answer decides one question; every question gets exactly one answer.
func (s *Service) answer(q *egressv1.Question) (*egressv1.DecideResponse, pending) {
	var (
		resp *egressv1.DecideResponse
		p    pending
	)
	switch k := q.GetKind().(type) {
	case *egressv1.Question_Http:
		resp, p = s.decideHTTP(k.Http)
		s.metrics.decided(kindHTTP, resp.GetDecision())
	case *egressv1.Question_Dns:
		resp = s.decideDNS(k.Dns)
		s.metrics.decided(kindDNS, resp.GetDecision())
	case *egressv1.Question_Tls:
		resp, p = s.decideTLS(k.Tls)
		s.metrics.decided(kindTLS, resp.GetDecision())
	default:
		// Only a newer proxy asks these; the kind label stays http|dns|tls.
		resp = &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_DENY, RuleId: "proxy", Reason: "question of an unknown kind",
			DenialCode: policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST}
	}
	resp.Id = q.GetId()
	resp.RuleId = bound.String(resp.GetRuleId(), maxRuleIDBytes)
	resp.Reason = bound.String(resp.GetReason(), maxReasonBytes)
	return resp, p
}

// checkHello validates the proxy's hello: its CA must be one or more PEM
// certificates of CAs, which is all a sandbox's trust store will hold.
func checkHello(h *egressv1.Hello) (*Proxy, error) {
	rest := h.GetCaCertificatePem()
	var out []byte
	var first string
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("ca_certificate_pem: a %s block where only certificates belong", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca_certificate_pem: %w", err)
		}
		if !c.IsCA {
			return nil, errors.New("ca_certificate_pem: a certificate that is not a CA's")
		}
		if first == "" {
			sum := sha256.Sum256(b.Bytes)
			first = hex.EncodeToString(sum[:])
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes})...)
	}
	if out == nil {
		return nil, errors.New("ca_certificate_pem: no PEM certificate")
	}
	return &Proxy{
		Version:            bound.String(h.GetProxyVersion(), 128),
		CAPEM:              out,
		CASHA256:           first,
		TransparentAddress: bound.String(h.GetTransparentAddress(), 64),
		DNSAddress:         bound.String(h.GetDnsAddress(), 64),
	}, nil
}

// warnPorts logs when the proxy listens on other ports than the ones
// nftables sends sandbox traffic to: sandboxes would then reach nothing.
// Only a warning, as a port mapping between the two may be intended.
func (s *Service) warnPorts(log *slog.Logger, px *Proxy) {
	s.reg.mu.RLock()
	want := s.reg.expect
	s.reg.mu.RUnlock()
	check := func(what, addr string, want uint16) {
		if want == 0 {
			return
		}
		_, port, err := net.SplitHostPort(addr)
		if err != nil || port != strconv.Itoa(int(want)) {
			log.Warn("the egress proxy does not listen where sandbox traffic is redirected", "listener", what, "proxy_address", addr, "redirect_port", want)
		}
	}
	check("transparent", px.TransparentAddress, want.Transparent)
	check("dns", px.DNSAddress, want.DNS)
}

func (s *Service) decideHTTP(r *egressv1.HttpRequest) (*egressv1.DecideResponse, pending) {
	e := s.reg.lookup(r.GetSourceIp())
	if e == nil {
		return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_DENY, RuleId: "no-execution",
			Reason:     "no running execution owns source address " + r.GetSourceIp(),
			DenialCode: policyv1.DenialCode_DENIAL_CODE_DECISION_UNAVAILABLE}, pending{}
	}
	d, g := e.decide(r)
	return e.request(r, redactedURL(r), d, g)
}

// request records a decided request (or spliced connection) in the
// execution's log and events, and answers it.
func (e *Execution) request(r *egressv1.HttpRequest, fullURL string, d policy.Decision, g grant) (*egressv1.DecideResponse, pending) {
	now := time.Now()
	reason := d.Reason
	url := bound.String(fullURL, maxURLBytes)
	logReason := bound.String(reason, maxLogReasonBytes)
	method, host, rule := bound.String(r.GetMethod(), maxMethodBytes), bound.String(r.GetHost(), maxHostBytes), bound.String(d.RuleID, maxRuleIDBytes)

	e.mu.Lock()
	e.nextID++
	reqID := e.nextID
	blocked := !d.Forward()
	if blocked {
		e.blocked++
	} else {
		e.allowed++
	}
	if d.Decision == policyv1.Decision_DECISION_WOULD_BLOCK {
		e.wouldBlock++
	}
	entry := &executorv1.NetworkLogEntry{
		Timestamp:  timestamppb.New(now),
		Method:     method,
		Url:        url,
		Hostname:   host,
		Blocked:    blocked,
		RuleId:     rule,
		Decision:   d.Decision,
		Source:     d.Source,
		DenialCode: d.Code,
		Secrets:    g.secrets,
	}
	if !blocked && len(g.swaps) > 0 {
		e.withSecrets++
	}
	if blocked {
		entry.StatusCode = 403
		if g.retryAfter > 0 {
			entry.StatusCode = 429
		}
		if st := r.GetViolationStatus(); r.GetViolation() != "" && st != 0 {
			entry.StatusCode = int32(st)
		}
	}
	wasCut := url != fullURL
	if d.Decision != policyv1.Decision_DECISION_ALLOW {
		entry.Reason = logReason
		wasCut = wasCut || logReason != reason
	}
	logged := e.record(entry, wasCut)
	e.mu.Unlock()

	e.emit(&executorv1.NetworkEvent{
		Kind:       executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST,
		RequestId:  reqID,
		Time:       timestamppb.New(now),
		Method:     method,
		Url:        url,
		Host:       host,
		Decision:   d.Decision,
		RuleId:     rule,
		Reason:     logReason,
		Source:     d.Source,
		DenialCode: d.Code,
		Secrets:    g.secrets,
	})
	if f := e.observe.Load(); f != nil {
		(*f)(Observed{Host: host, RuleID: rule, Source: d.Source, Decision: d.Decision})
	}
	resp := &egressv1.DecideResponse{Decision: d.Decision, RuleId: d.RuleID, Reason: reason, ExecutionId: e.id, Source: d.Source, DenialCode: d.Code}
	if !blocked {
		resp.MaxRequestBytes = policy.MinNonZero(e.policy().Limits().MaxRequestBytes, g.maxRequest)
		resp.MaxResponseBytes = g.maxResponse
		resp.Swaps = g.swaps
	}
	resp.RetryAfterSeconds = g.retryAfter
	return resp, pending{exec: e, id: reqID, entry: entry, logged: logged, grant: g}
}

// decide applies the proxy's own verdict, the execution's limits, its
// policy and then its budgets (admit), in that order.
func (e *Execution) decide(r *egressv1.HttpRequest) (policy.Decision, grant) {
	block := func(code policyv1.DenialCode, rule, reason string) policy.Decision {
		return policy.Decision{Action: policyv1.Action_ACTION_DENY, Decision: policyv1.Decision_DECISION_DENY, RuleID: rule, Reason: reason, Code: code}
	}
	// A request the proxy found malformed or deceptive is blocked even in
	// audit mode: forwarding it would send something other than what was
	// checked.
	if v := r.GetViolation(); v != "" {
		return block(policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST, "proxy", v), grant{}
	}
	pol := e.policy() // one policy for the limits and the decision
	limits := pol.Limits()
	if d, over := e.countRequest(limits); over {
		return d, grant{}
	}
	if limits.MaxRequestBytes > 0 && r.GetContentLength() > 0 && uint64(r.GetContentLength()) > limits.MaxRequestBytes {
		return block(policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED, "limits.max_request_bytes", fmt.Sprintf("request body of %d bytes is above the limit of %d", r.GetContentLength(), limits.MaxRequestBytes)), grant{}
	}
	d := pol.Decide(policyRequest(r))
	d, swaps, carried := e.placeSecrets(r, pol, d)
	if !d.Forward() {
		return d, grant{secrets: carried}
	}
	d, g := e.admit(d, r.GetContentLength(), limits)
	g.secrets = carried
	if d.Forward() {
		g.swaps = swaps
	}
	return d, g
}

// policyRequest is what the policy decides of r.
func policyRequest(r *egressv1.HttpRequest) policy.Request {
	return policy.Request{Method: r.GetMethod(), Host: r.GetHost(), Path: r.GetPath(), WebSocket: r.GetWebsocket(), Scheme: r.GetScheme(), Port: r.GetPort()}
}

// countRequest counts one request against max_requests, and returns the
// denial when it is over.
func (e *Execution) countRequest(limits policy.Limits) (policy.Decision, bool) {
	e.mu.Lock()
	e.requests++
	n := e.requests
	e.mu.Unlock()
	if limits.MaxRequests > 0 && n > limits.MaxRequests {
		return policy.Decision{Action: policyv1.Action_ACTION_DENY, Decision: policyv1.Decision_DECISION_DENY, RuleID: "limits.max_requests",
			Reason: fmt.Sprintf("the execution may make %d requests", limits.MaxRequests), Code: policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED}, true
	}
	return policy.Decision{}, false
}

// lost ends p, whose outcome can no longer arrive, with outcomeLost: in
// its log entry if the log has room for the reason (counted like any
// entry's bytes), and in an outcome event.
func (e *Execution) lost(p pending) {
	// What it sent is not known: the bytes it held count as spent.
	e.settle(p.grant, p.grant.reserved, 0)
	now := time.Now()
	e.mu.Lock()
	if p.logged && p.entry.GetReason() == "" {
		// The reason's field: its bytes, a tag byte and a length byte.
		extra := len(outcomeLost) + 2
		if !e.released && e.logBytes+extra <= maxLogBytes && e.budget.take(extra) {
			p.entry.Reason = outcomeLost
			e.logBytes += extra
			e.allowedBytes += extra
		}
	}
	e.mu.Unlock()
	e.emit(&executorv1.NetworkEvent{
		Kind:       executorv1.NetworkEventKind_NETWORK_EVENT_KIND_OUTCOME,
		RequestId:  p.id,
		Time:       timestamppb.New(now),
		Method:     p.entry.GetMethod(),
		Url:        p.entry.GetUrl(),
		Host:       p.entry.GetHostname(),
		Decision:   p.entry.GetDecision(),
		RuleId:     p.entry.GetRuleId(),
		DenialCode: p.entry.GetDenialCode(),
		Duration:   durationpb.New(now.Sub(p.entry.GetTimestamp().AsTime())),
		Error:      outcomeLost,
	})
}

func (e *Execution) outcome(p pending, o *egressv1.Outcome) {
	e.heard.Store(time.Now().UnixNano())
	e.settle(p.grant, o.GetBytesSent(), o.GetBytesReceived())
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
		DenialCode:    p.entry.GetDenialCode(),
		StatusCode:    o.GetStatusCode(),
		BytesSent:     o.GetBytesSent(),
		BytesReceived: o.GetBytesReceived(),
		Duration:      o.GetDuration(),
		Error:         bound.String(o.GetError(), maxLogReasonBytes),
	})
}

func (s *Service) decideDNS(q *egressv1.DnsQuery) *egressv1.DecideResponse {
	e := s.reg.lookup(q.GetSourceIp())
	if e == nil {
		return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_DENY, RuleId: "no-execution",
			Reason: "no running execution owns source address " + q.GetSourceIp(), DenialCode: policyv1.DenialCode_DENIAL_CODE_DECISION_UNAVAILABLE}
	}
	if resp, over := e.overDNSBudget(); over {
		return resp
	}
	// A name no host entry could allow any request to is not resolved:
	// host_not_allowed, as a request to it would be denied.
	name := bound.String(q.GetName(), maxHostBytes)
	d, reason, code := policyv1.Decision_DECISION_DENY, "no rule of the policy could allow a request to "+name, policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED
	if e.policy().CouldAllowHost(q.GetName()) {
		d, reason, code = policyv1.Decision_DECISION_ALLOW, "", policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED
	}
	e.emit(&executorv1.NetworkEvent{
		Kind:       executorv1.NetworkEventKind_NETWORK_EVENT_KIND_DNS,
		Time:       timestamppb.Now(),
		Method:     bound.String(q.GetType(), maxMethodBytes),
		Url:        name,
		Host:       name,
		Decision:   d,
		RuleId:     "dns",
		Reason:     bound.String(reason, maxLogReasonBytes),
		DenialCode: code,
	})
	return &egressv1.DecideResponse{Decision: d, RuleId: "dns", Reason: reason, ExecutionId: e.id, DenialCode: code}
}

// refusal records a refused connection, or requests and queries the
// proxy refused by its per-source limits: those are counted, and shown as
// an event (rate_limited) only when the proxy sampled a reason for them.
// A refused connection's event is ambiguous_request: the connection
// failed one of the proxy's own checks before a request could be read,
// and the report says which only in its reason.
func (e *Execution) refusal(r *egressv1.Refusal) {
	code := policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST
	if n, q := r.GetRateLimitedRequests(), r.GetRateLimitedDnsQueries(); n > 0 || q > 0 {
		e.mu.Lock()
		e.blocked += n
		e.rateLimited += n
		e.dnsRateLimited += q
		e.mu.Unlock()
		if r.GetReason() == "" {
			return
		}
		code = policyv1.DenialCode_DENIAL_CODE_RATE_LIMITED
	}
	e.emit(&executorv1.NetworkEvent{
		Kind:       executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED,
		Time:       timestamppb.Now(),
		Url:        bound.String(r.GetDestination(), maxHostBytes),
		Host:       bound.String(r.GetDestination(), maxHostBytes),
		Decision:   policyv1.Decision_DECISION_DENY,
		RuleId:     "proxy",
		Reason:     bound.String(r.GetReason(), maxLogReasonBytes),
		DenialCode: code,
	})
}

// redactedURL rebuilds the request's URL from what the proxy sent, whose
// query is already redacted.
func redactedURL(r *egressv1.HttpRequest) string {
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
