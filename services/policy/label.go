package policy

import policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"

// Decision names: the one lowercase vocabulary of a decision in both
// binaries' metric labels and log fields.
const (
	LabelAllow      = "allow"
	LabelDeny       = "deny"
	LabelWouldBlock = "would_block"
)

// DecisionLabels are every name DecisionLabel returns.
var DecisionLabels = []string{LabelAllow, LabelDeny, LabelWouldBlock}

// DecisionLabel names d. Anything but allow and would-block is enforced as a
// deny, so it is named one.
func DecisionLabel(d policyv1.Decision) string {
	switch d {
	case policyv1.Decision_DECISION_ALLOW:
		return LabelAllow
	case policyv1.Decision_DECISION_WOULD_BLOCK:
		return LabelWouldBlock
	default:
		return LabelDeny
	}
}
