package decision

import (
	"strconv"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/bound"
	"github.com/sandpit-run/sandpit/services/policy"
)

// decideTLS answers whether the proxy may mint a leaf for a TLS server
// name: the question DNS asks, for https. It records nothing in the
// network log and spends no DNS budget; the proxy reports a refused
// handshake itself (a refused network event), and every request on an
// allowed connection is still decided on its own.
func (s *Service) decideTLS(q *egressv1.TlsServerName) *egressv1.DecideResponse {
	e := s.reg.lookup(q.GetSourceIp())
	if e == nil {
		return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_DENY, RuleId: "no-execution",
			Reason: "no running execution owns source address " + q.GetSourceIp()}
	}
	if e.policy().CouldAllowScheme(q.GetName(), policy.SchemeHTTPS) {
		return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_ALLOW, RuleId: "tls", ExecutionId: e.id}
	}
	return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_DENY, RuleId: "tls", ExecutionId: e.id,
		Reason: "no rule of the policy could allow https to " + bound.String(q.GetName(), maxHostBytes) + " (port " + strconv.Itoa(int(q.GetPort())) + ")"}
}
