package decision

import (
	"net"
	"strconv"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/bound"
	"github.com/sandpit-run/sandpit/services/policy"
)

// methodPassthrough is the method of a spliced connection's log entry and
// events: the connection is one exchange whose requests are not seen.
const methodPassthrough = "CONNECT"

// decideTLS answers whether the proxy may mint a leaf for a TLS server
// name: the question DNS asks, for https. It records nothing in the
// network log and spends no DNS budget; the proxy reports a refused
// handshake itself (a refused network event), and every request on an
// allowed connection is still decided on its own. A name the policy
// passes through (policy.DecideTLS) is answered by passthrough instead.
func (s *Service) decideTLS(q *egressv1.TlsServerName) (*egressv1.DecideResponse, pending) {
	e := s.reg.lookup(q.GetSourceIp())
	if e == nil {
		return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_DENY, RuleId: "no-execution",
			Reason:     "no running execution owns source address " + q.GetSourceIp(),
			DenialCode: policyv1.DenialCode_DENIAL_CODE_DECISION_UNAVAILABLE}, pending{}
	}
	pol := e.policy()
	if td := pol.DecideTLS(q.GetName(), q.GetPort()); td.Passthrough {
		return e.passthrough(q, td, pol.Limits())
	}
	if pol.CouldAllowScheme(q.GetName(), policy.SchemeHTTPS) {
		return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_ALLOW, RuleId: "tls", ExecutionId: e.id}, pending{}
	}
	return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_DENY, RuleId: "tls", ExecutionId: e.id,
		Reason: "no rule of the policy could allow https to " + bound.String(q.GetName(), maxHostBytes) + " (port " + strconv.Itoa(int(q.GetPort())) + ")"}, pending{}
}

// passthrough admits a connection the policy passes through, as one
// request (method CONNECT, url https://host:port) in the log and events:
// max_requests counts it, max_concurrent_connections holds it while it is
// open, and the proxy's outcome, when it ends, reports the bytes it
// copied each way, which the total budgets count. Its length unknown, it
// reserves what is left of max_total_request_bytes while open (as a
// request without Content-Length does), and the answer bounds each
// direction by what was left of each total; max_request_bytes, a body's
// bound, does not apply to it. The answer is marked passthrough even when
// a budget denies it, so that the proxy does not report the refused
// handshake again.
func (e *Execution) passthrough(q *egressv1.TlsServerName, td policy.TLSDecision, limits policy.Limits) (*egressv1.DecideResponse, pending) {
	d := policy.Decision{Action: policyv1.Action_ACTION_ALLOW, Decision: td.Decision, RuleID: td.RuleID, Reason: td.Reason,
		Code: td.Code, Layer: td.Layer, Source: td.Source}
	if td.Decision == policyv1.Decision_DECISION_WOULD_BLOCK {
		d.Action = policyv1.Action_ACTION_DENY
	}
	r := &egressv1.HttpRequest{SourceIp: q.GetSourceIp(), Method: methodPassthrough, Scheme: policy.SchemeHTTPS,
		Host: q.GetName(), Port: q.GetPort()}
	var g grant
	if over, ok := e.countRequest(limits); ok {
		d = over
	} else {
		d, g = e.admit(d, -1, limits)
	}
	url := "https://" + net.JoinHostPort(q.GetName(), strconv.Itoa(int(q.GetPort())))
	resp, p := e.request(r, url, d, g)
	resp.MaxRequestBytes = g.maxRequest
	resp.Passthrough = true
	return resp, p
}
