package decide

import (
	"fmt"
	"net/netip"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/bound"
)

// Bounds of the fields the proxy sends, in bytes, as egress.proto documents
// them. With them a question stays below a tenth of MaxMessageBytes.
const (
	MaxMethodBytes = 32
	MaxHostBytes   = 253
	// MaxTargetBytes bounds path and query together; the proxy answers a
	// longer request target with 414 before it asks.
	MaxTargetBytes  = 8 << 10
	MaxReasonBytes  = 1 << 10
	maxTokenBytes   = 16 // scheme, protocol, DNS type
	maxAddressBytes = 64 // host:port
	maxVersionBytes = 128
	maxCABytes      = 16 << 10
)

// HTTPQuestion is an HTTP request as the proxy checked it, held until the
// executor decides it.
type HTTPQuestion struct {
	// SourceIP is the sandbox address the connection came from.
	SourceIP netip.Addr
	// Method is the request method as sent.
	Method string
	// Scheme is http or https.
	Scheme string
	// Host is the canonical host, without port.
	Host string
	// Port is the destination port.
	Port uint16
	// Path is the normalized path; Query the raw query with secret
	// parameters already redacted.
	Path, Query string
	// ContentLength is the declared body length, -1 when unknown.
	ContentLength int64
	// Protocol is HTTP/1.1 or HTTP/2.
	Protocol string
	// WebSocket is set for an upgrade request.
	WebSocket bool
	// Violation, when set, is why the proxy blocks the request whatever
	// the policy says; ViolationStatus the status it answers with (0 is
	// 403).
	Violation       string
	ViolationStatus int
	// Placeholders are the secrets' placeholders found in the request, at
	// most MaxPlaceholders, each bounded as egress.proto says.
	Placeholders []*egressv1.FoundPlaceholder
}

// Bounds of the placeholders a question carries.
const (
	MaxPlaceholders         = 16
	maxPlaceholderNameBytes = 128
	maxPlaceholderIDBytes   = 32
	MaxPlaceholderValue     = 512
)

// DNSQuestion is a query a sandbox sent to the proxy's resolver.
type DNSQuestion struct {
	SourceIP netip.Addr
	// Name is the queried name, canonical when it could be made so.
	Name string
	// Type is the query type (A, AAAA, ...).
	Type string
}

// Verdict is the executor's answer to a question, or the proxy's own
// fail-closed deny when none came.
type Verdict struct {
	// QuestionID identifies the question on the stream; an Outcome names
	// it.
	QuestionID uint64
	// Decision is DECISION_ALLOW, DECISION_DENY or DECISION_WOULD_BLOCK.
	Decision policyv1.Decision
	// RuleID and Reason say which rule decided and why, Source which
	// policy the rule is of (operator, tenant, token, inline).
	RuleID, Reason, Source string
	// ExecutionID is the execution the source address belongs to, empty
	// when none does.
	ExecutionID string
	// MaxRequestBytes bounds the body forwarded for an allowed request,
	// MaxResponseBytes the body returned to the sandbox; 0 is no limit.
	MaxRequestBytes, MaxResponseBytes uint64
	// RetryAfterSeconds, on a deny by a rate or a concurrency limit, is
	// the Retry-After of the 429 that answers it.
	RetryAfterSeconds uint32
	// Code says why a request was denied (or would be): the executor's,
	// or the proxy's own when it could not ask.
	Code policyv1.DenialCode
	// Swaps, on an allowed request, are the placeholders to replace by
	// their secrets' values, and back in the response.
	Swaps []*egressv1.Swap
	// Passthrough, on a TLS answer, says the connection is spliced, not
	// intercepted (or, denied, that the executor recorded its refusal);
	// MaxRequestBytes and MaxResponseBytes then bound its bytes each way.
	Passthrough bool
}

// Forward reports whether the request may go upstream: allowed, or only
// would be blocked (audit mode).
func (v Verdict) Forward() bool {
	return v.Decision == policyv1.Decision_DECISION_ALLOW || v.Decision == policyv1.Decision_DECISION_WOULD_BLOCK
}

// Outcome is what an allowed request led to.
type Outcome struct {
	// QuestionID is the Verdict's.
	QuestionID uint64
	// StatusCode is the upstream's status, 0 when none arrived.
	StatusCode int
	// BytesSent and BytesReceived count the request and response bodies.
	BytesSent, BytesReceived uint64
	// Duration runs from the verdict to the end of the response.
	Duration time.Duration
	// Error says why the exchange failed, if it did.
	Error string
}

// Refusal is a connection refused before a request could be read.
type Refusal struct {
	SourceIP netip.Addr
	// Destination is the original destination; invalid when unknown.
	Destination netip.AddrPort
	// Reason says why: not HTTP, TLS without SNI, ...
	Reason string
	// RateLimitedRequests and RateLimitedDNSQueries count the questions of
	// SourceIP refused by its Limits since the last report of them.
	RateLimitedRequests, RateLimitedDNSQueries uint32
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func (h Hello) message() (*egressv1.DecideRequest, error) {
	if len(h.CACertPEM) == 0 || len(h.CACertPEM) > maxCABytes {
		return nil, fmt.Errorf("hello: a CA certificate of %d bytes, want 1 to %d", len(h.CACertPEM), maxCABytes)
	}
	return &egressv1.DecideRequest{Kind: &egressv1.DecideRequest_Hello{Hello: &egressv1.Hello{
		ProxyVersion:       bound.String(h.Version, maxVersionBytes),
		CaCertificatePem:   h.CACertPEM,
		TransparentAddress: bound.String(h.TransparentAddress, maxAddressBytes),
		DnsAddress:         bound.String(h.DNSAddress, maxAddressBytes),
	}}}, nil
}

func question(id uint64, q *egressv1.Question) *egressv1.DecideRequest {
	q.Id = id
	return &egressv1.DecideRequest{Kind: &egressv1.DecideRequest_Question{Question: q}}
}

func report(r *egressv1.Report) *egressv1.DecideRequest {
	return &egressv1.DecideRequest{Kind: &egressv1.DecideRequest_Report{Report: r}}
}

// message bounds every field. A method or path that had to be cut makes
// the request a violation: what would be decided is no longer what was
// sent. A query is only logged, never decided on, so cutting it is enough.
func (q HTTPQuestion) message(id uint64) *egressv1.DecideRequest {
	violation, status := q.Violation, q.ViolationStatus
	method, path := bound.String(q.Method, MaxMethodBytes), bound.String(q.Path, MaxTargetBytes)
	switch {
	case violation != "":
	case method != q.Method:
		violation = fmt.Sprintf("method longer than %d bytes", MaxMethodBytes)
	case path != q.Path:
		violation = fmt.Sprintf("path longer than %d bytes", MaxTargetBytes)
	}
	return question(id, &egressv1.Question{Kind: &egressv1.Question_Http{Http: &egressv1.HttpRequest{
		SourceIp:        addrString(q.SourceIP),
		Method:          method,
		Scheme:          bound.String(q.Scheme, maxTokenBytes),
		Host:            bound.String(q.Host, MaxHostBytes),
		Port:            uint32(q.Port),
		Path:            path,
		Query:           bound.String(q.Query, max(MaxTargetBytes-len(path), 0)),
		ContentLength:   q.ContentLength,
		Protocol:        bound.String(q.Protocol, maxTokenBytes),
		Websocket:       q.WebSocket,
		Violation:       bound.String(violation, MaxReasonBytes),
		ViolationStatus: uint32(status),
		Placeholders:    boundPlaceholders(q.Placeholders),
	}}})
}

// boundPlaceholders keeps found placeholders within their bounds; a cut
// value matches no binding, so the executor refuses rather than swaps.
func boundPlaceholders(found []*egressv1.FoundPlaceholder) []*egressv1.FoundPlaceholder {
	if len(found) > MaxPlaceholders {
		found = found[:MaxPlaceholders]
	}
	out := make([]*egressv1.FoundPlaceholder, len(found))
	for i, f := range found {
		out[i] = &egressv1.FoundPlaceholder{
			Id:    bound.String(f.GetId(), maxPlaceholderIDBytes),
			Place: f.GetPlace(),
			Name:  bound.String(f.GetName(), maxPlaceholderNameBytes),
			Value: bound.String(f.GetValue(), MaxPlaceholderValue),
		}
	}
	return out
}

func (q DNSQuestion) message(id uint64) *egressv1.DecideRequest {
	return question(id, &egressv1.Question{Kind: &egressv1.Question_Dns{Dns: &egressv1.DnsQuery{
		SourceIp: addrString(q.SourceIP), Name: bound.String(q.Name, MaxHostBytes), Type: bound.String(q.Type, maxTokenBytes),
	}}})
}

func (o Outcome) message() *egressv1.DecideRequest {
	return report(&egressv1.Report{Kind: &egressv1.Report_Outcome{Outcome: &egressv1.Outcome{
		QuestionId:    o.QuestionID,
		StatusCode:    int32(o.StatusCode),
		BytesSent:     o.BytesSent,
		BytesReceived: o.BytesReceived,
		Duration:      durationpb.New(o.Duration),
		Error:         bound.String(o.Error, MaxReasonBytes),
	}}})
}

func (r Refusal) message() *egressv1.DecideRequest {
	dst := ""
	if r.Destination.IsValid() {
		dst = r.Destination.String()
	}
	return report(&egressv1.Report{Kind: &egressv1.Report_Refusal{Refusal: &egressv1.Refusal{
		SourceIp: addrString(r.SourceIP), Destination: dst, Reason: bound.String(r.Reason, MaxReasonBytes),
		RateLimitedRequests: r.RateLimitedRequests, RateLimitedDnsQueries: r.RateLimitedDNSQueries,
	}}})
}

func verdict(resp *egressv1.DecideResponse) Verdict {
	return Verdict{
		QuestionID:        resp.GetId(),
		Decision:          resp.GetDecision(),
		RuleID:            resp.GetRuleId(),
		Reason:            resp.GetReason(),
		Source:            resp.GetSource(),
		ExecutionID:       resp.GetExecutionId(),
		MaxRequestBytes:   resp.GetMaxRequestBytes(),
		MaxResponseBytes:  resp.GetMaxResponseBytes(),
		RetryAfterSeconds: resp.GetRetryAfterSeconds(),
		Code:              resp.GetDenialCode(),
		Passthrough:       resp.GetPassthrough(),
		Swaps:             resp.GetSwaps(),
	}
}
