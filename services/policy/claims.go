package policy

import (
	"fmt"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// Rule ids of the decisions a [Claims] policy denies.
const (
	RuleTokenDomains = "token.allowedDomains"
	RuleTokenRevoked = "token.apiLimits"
)

// Claims is the policy a caller's token grants, in the prototype's JWT
// shape: requests only to hosts matching allowedDomains (to every host when
// it is nil), and none that an earlier policy of a [Chain] allowed by a rule
// the token revokes (apiLimits: a rule id mapped to false). It allows
// nothing by itself, so as a narrower it can only take access away; when it
// allows, the chain reports the rule of the policy before it.
func Claims(allowedDomains, revoked []string) (*Compiled, error) {
	p := &policyv1.Policy{Mode: policyv1.Mode_MODE_ENFORCE, DefaultAction: policyv1.Action_ACTION_DENY}
	if allowedDomains == nil {
		p.DefaultAction = policyv1.Action_ACTION_ALLOW
	}
	for _, d := range allowedDomains {
		// Both schemes: which ones a host speaks is the operator's to say.
		p.Hosts = append(p.Hosts, &policyv1.HostPolicy{Host: d, DefaultAction: policyv1.Action_ACTION_ALLOW,
			Schemes: []string{SchemeHTTPS, SchemeHTTP}})
	}
	l, errs := compileLayer(p)
	if len(errs) > 0 {
		return nil, fmt.Errorf("allowedDomains: %w", errs)
	}
	l.claims = true
	l.revoked = map[string]bool{}
	for _, id := range revoked {
		l.revoked[id] = true
	}
	return &Compiled{layers: []*layer{l}}, nil
}

// decideClaims is decide for a Claims layer; allowedBy are the rules that
// allowed the request in the layers before it.
func (l *layer) decideClaims(r Request, allowedBy []string) Decision {
	for _, id := range allowedBy {
		if l.revoked[id] {
			return deny(codeToken, RuleTokenRevoked, "the caller's token takes rule %s away (apiLimits)", id)
		}
	}
	if _, ok := l.hosts.lookup(r.Host); !ok && !l.defaultAllow {
		return deny(codeToken, RuleTokenDomains, "the caller's token does not allow host %s (allowedDomains)", r.Host)
	}
	return allow("token", "the caller's token allows the request")
}
