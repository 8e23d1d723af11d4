package decide

import (
	"net/netip"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
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
	// the policy says.
	Violation string
}

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
	// RuleID and Reason say which rule decided and why.
	RuleID, Reason string
	// ExecutionID is the execution the source address belongs to, empty
	// when none does.
	ExecutionID string
	// MaxRequestBytes bounds the body forwarded for an allowed request;
	// 0 is no limit.
	MaxRequestBytes uint64
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
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func (q HTTPQuestion) message() *policyv1.DecideRequest {
	return &policyv1.DecideRequest{Kind: &policyv1.DecideRequest_Http{Http: &policyv1.HttpRequest{
		SourceIp:      addrString(q.SourceIP),
		Method:        q.Method,
		Scheme:        q.Scheme,
		Host:          q.Host,
		Port:          uint32(q.Port),
		Path:          q.Path,
		Query:         q.Query,
		ContentLength: q.ContentLength,
		Protocol:      q.Protocol,
		Websocket:     q.WebSocket,
		Violation:     q.Violation,
	}}}
}

func (q DNSQuestion) message() *policyv1.DecideRequest {
	return &policyv1.DecideRequest{Kind: &policyv1.DecideRequest_Dns{Dns: &policyv1.DnsQuery{
		SourceIp: addrString(q.SourceIP), Name: q.Name, Type: q.Type,
	}}}
}

func (o Outcome) message() *policyv1.DecideRequest {
	return &policyv1.DecideRequest{Kind: &policyv1.DecideRequest_Outcome{Outcome: &policyv1.Outcome{
		RequestId:     o.QuestionID,
		StatusCode:    int32(o.StatusCode),
		BytesSent:     o.BytesSent,
		BytesReceived: o.BytesReceived,
		Duration:      durationpb.New(o.Duration),
		Error:         o.Error,
	}}}
}

func (r Refusal) message() *policyv1.DecideRequest {
	dst := ""
	if r.Destination.IsValid() {
		dst = r.Destination.String()
	}
	return &policyv1.DecideRequest{Kind: &policyv1.DecideRequest_Refusal{Refusal: &policyv1.Refusal{
		SourceIp: addrString(r.SourceIP), Destination: dst, Reason: r.Reason,
	}}}
}

func verdict(resp *policyv1.DecideResponse) Verdict {
	return Verdict{
		QuestionID:      resp.GetId(),
		Decision:        resp.GetDecision(),
		RuleID:          resp.GetRuleId(),
		Reason:          resp.GetReason(),
		ExecutionID:     resp.GetExecutionId(),
		MaxRequestBytes: resp.GetMaxRequestBytes(),
	}
}
