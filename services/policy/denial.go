package policy

import (
	"strings"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// DenialType is the refusal body's error.type: one value for every refusal
// of the proxy, so a program tells them from its upstream's own errors.
const DenialType = "sandpit_policy_denied"

// DenialCodeName is code as the refusal body's error.code spells it: the
// enum's name without its prefix, lowercase (path_not_allowed). An unset
// code names nothing.
func DenialCodeName(code policyv1.DenialCode) string {
	if code == policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(code.String(), "DENIAL_CODE_"))
}
