package proxy

import (
	"encoding/json"
	"fmt"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy"
)

// denialError is the "error" member of a refusal body, in the shape API
// SDKs read (Stripe's raises it as err.code, err.message and err.raw,
// OpenAI's as err.code, err.type and err.error, axios hands it over as
// err.response.data.error): what a program needs to act on the refusal
// is in it, so it survives an SDK that keeps only this member.
type denialError struct {
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
	RuleID  string `json:"rule_id"`
	Method  string `json:"method"`
	Host    string `json:"host"`
	Path    string `json:"path"`
	Hint    string `json:"hint"`
}

// blockBody is the JSON body of every refusal of a request: 403 by the
// policy or the proxy's checks, 429 over a per-source rate, 413 for a
// body past its limit, 414 and 431 over a size bound. The top-level
// fields besides error are the body's first shape, kept for the programs
// that read it.
func blockBody(c *checked, v verdict) []byte {
	code := v.code
	if code == policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED {
		// A decider that denies without saying why: by a rule, as far
		// as the proxy can tell.
		code = policyv1.DenialCode_DENIAL_CODE_RULE_DENIED
	}
	hint := denialHint(code, c, v)
	b, _ := json.Marshal(struct {
		Decision string      `json:"decision"`
		Rule     string      `json:"rule"`
		RuleID   string      `json:"rule_id"`
		Reason   string      `json:"reason"`
		Hint     string      `json:"hint"`
		Host     string      `json:"host"`
		Method   string      `json:"method"`
		Path     string      `json:"path"`
		Error    denialError `json:"error"`
	}{"blocked", v.rule, v.rule, v.reason, hint, c.host, c.method, c.path, denialError{
		Type:    policy.DenialType,
		Code:    policy.DenialCodeName(code),
		Message: fmt.Sprintf("sandpit blocked %s %s%s: %s (rule %s)", c.method, c.host, c.path, v.reason, v.rule),
		RuleID:  v.rule,
		Method:  c.method,
		Host:    c.host,
		Path:    c.path,
		Hint:    hint,
	}})
	return append(b, '\n')
}

// denialHint says what a caller would have to change for the request to
// pass. It is built from the request, the code and the deciding rule
// alone, never from the policy's other rules: a sandbox learns no more of
// what is allowed than it could by trying.
func denialHint(code policyv1.DenialCode, c *checked, v verdict) string {
	who := policyOwner(v.source)
	switch code {
	case policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED:
		return fmt.Sprintf("no rule allows requests to %s; %s would need an entry for the host", c.host, who)
	case policyv1.DenialCode_DENIAL_CODE_METHOD_NOT_ALLOWED:
		return fmt.Sprintf("no rule allows %s on this path of %s; %s would need one", c.method, c.host, who)
	case policyv1.DenialCode_DENIAL_CODE_PATH_NOT_ALLOWED:
		return fmt.Sprintf("no rule allows %s %s on %s; %s would need one", c.method, c.path, c.host, who)
	case policyv1.DenialCode_DENIAL_CODE_PORT_NOT_ALLOWED:
		return fmt.Sprintf("%s is not allowed over %s on port %d; %s would need to list that scheme and port for the host", c.host, c.scheme, c.port, who)
	case policyv1.DenialCode_DENIAL_CODE_WEBSOCKET_NOT_ALLOWED:
		return fmt.Sprintf("no rule allows a WebSocket upgrade on this path of %s; %s would need an allow rule with websocket: true", c.host, who)
	case policyv1.DenialCode_DENIAL_CODE_RULE_DENIED:
		return fmt.Sprintf("rule %s of %s denies this request; retrying will not help, only a change of that rule would", v.rule, who)
	case policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST:
		if c.hint != "" {
			return c.hint
		}
		return "the proxy refuses a request that servers could read in more than one way; send it in plain, canonical form (the reason says what was wrong)"
	case policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED:
		return fmt.Sprintf("the execution is over its policy's limit %s; a smaller request, or a new execution, stays within it", v.rule)
	case policyv1.DenialCode_DENIAL_CODE_RATE_LIMITED:
		return "this sandbox sent requests faster than the proxy admits; wait a moment and retry more slowly"
	case policyv1.DenialCode_DENIAL_CODE_DECISION_UNAVAILABLE:
		return "the proxy could not get a policy decision for this request; retrying later may succeed"
	case policyv1.DenialCode_DENIAL_CODE_SECRET_MISUSE:
		return "a secret was sent where it is not bound; send it only to the hosts and rules it is bound to"
	case policyv1.DenialCode_DENIAL_CODE_TOKEN_DENIED:
		return "the caller's token does not allow this request; it would need a token whose claims do"
	}
	return ""
}

// policyOwner names the policy of source (a verdict's Source) for a hint.
func policyOwner(source string) string {
	switch source {
	case "tenant":
		return "the tenant's policy"
	case "inline":
		return "the request's inline policy"
	case "operator":
		return "the operator's policy"
	}
	return "the policy"
}
