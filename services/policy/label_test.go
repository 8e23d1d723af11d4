package policy

import (
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

func TestDecisionLabel(t *testing.T) {
	tests := []struct {
		d    policyv1.Decision
		want string
	}{
		{policyv1.Decision_DECISION_ALLOW, "allow"},
		{policyv1.Decision_DECISION_DENY, "deny"},
		{policyv1.Decision_DECISION_WOULD_BLOCK, "would_block"},
		{policyv1.Decision_DECISION_UNSPECIFIED, "deny"},
		{policyv1.Decision(99), "deny"},
	}
	for _, tt := range tests {
		if got := DecisionLabel(tt.d); got != tt.want {
			t.Errorf("DecisionLabel(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}
