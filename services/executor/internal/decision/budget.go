package decision

import (
	"fmt"
	"time"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DNSBudget is how many DNS queries one execution may have decided; the
// ones after it are denied (NXDOMAIN) with a reason, whatever the policy
// says (README: Limits). The proxy's per-source rate limit keeps a flood
// from reaching it quickly; this bounds what a long execution may ask.
const DNSBudget = 1000

// KeepaliveMinTime is the shortest ping interval the decision server
// permits a proxy (whose own is 10s, its decide.KeepaliveTime).
const KeepaliveMinTime = 5 * time.Second

// overDNSBudget counts one query of e and tells, once over DNSBudget, the
// deny to answer it with. Only the first query over the budget becomes a
// network event: a flood would otherwise crowd out the others.
func (e *Execution) overDNSBudget() (*egressv1.DecideResponse, bool) {
	n := e.dnsQueries.Add(1)
	if n <= DNSBudget {
		return nil, false
	}
	reason := fmt.Sprintf("dns query budget of %d queries per execution spent", DNSBudget)
	if n == DNSBudget+1 {
		e.emit(&executorv1.NetworkEvent{
			Kind:       executorv1.NetworkEventKind_NETWORK_EVENT_KIND_DNS,
			Time:       timestamppb.Now(),
			Decision:   policyv1.Decision_DECISION_DENY,
			RuleId:     "dns.budget",
			Reason:     reason,
			DenialCode: policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED,
		})
	}
	return &egressv1.DecideResponse{Decision: policyv1.Decision_DECISION_DENY, RuleId: "dns.budget", Reason: reason, ExecutionId: e.id,
		DenialCode: policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED}, true
}
