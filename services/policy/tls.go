package policy

import (
	"fmt"
	"slices"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// TLSDecision is the verdict on a TLS connection by its server name and
// original destination port, before any request is read.
type TLSDecision struct {
	// Decision is DECISION_ALLOW, DECISION_DENY or, in audit mode,
	// DECISION_WOULD_BLOCK.
	Decision policyv1.Decision
	// Passthrough: the connection is spliced to the upstream without
	// interception. When false and the connection goes on, it is
	// intercepted and each request is decided on its own.
	Passthrough bool
	// RuleID, Reason, Code, Layer and Source are as in [Decision].
	RuleID, Reason string
	Code           policyv1.DenialCode
	Layer          int
	Source         string
}

// Forward reports whether the connection goes on: allowed, or only would
// be blocked (audit mode).
func (d TLSDecision) Forward() bool {
	return d.Decision == policyv1.Decision_DECISION_ALLOW || d.Decision == policyv1.Decision_DECISION_WOULD_BLOCK
}

// RulePassthroughIntercepted is the rule id of an allowed connection that
// is intercepted rather than spliced.
const RulePassthroughIntercepted = "tls"

// tlsVote is what one policy of a chain says of a server name.
type tlsVote int

const (
	voteDeny      tlsVote = iota
	voteIntercept         // allowed, by an entry without passthrough or the default
	votePass              // allowed by a pass-through entry
	voteNeutral           // a token's claims: they only filter
)

// compilePassthrough checks a pass-through entry: spliced bytes cannot be
// matched against rules, so it has none, allows the whole host, and only
// over https. The entry then allows every request (its default), which is
// what an interception of it (a chain that does not agree, see DecideTLS)
// decides.
func compilePassthrough(c *checker, field string, hp *policyv1.HostPolicy, e *hostEntry) {
	f := field + ".passthrough"
	if len(hp.GetRules()) > 0 {
		c.add(f, "a pass-through host is spliced without interception, so no rule can apply to it: remove its rules or passthrough")
	}
	// A secret bound to a host passed through is refused by
	// compileSecrets: the proxy never reads such a host's requests.
	if hp.GetDefaultAction() == policyv1.Action_ACTION_DENY {
		c.add(f, "a pass-through host is allowed whole: drop default: deny (or the entry, to deny the host)")
	}
	if slices.Contains(hp.GetSchemes(), SchemeHTTP) {
		c.add(f, "pass-through is for TLS: remove http from the host's schemes")
	}
	e.passthrough = true
	e.defaultAllow = true
}

// DecideTLS decides a TLS connection to host (canonical) on port (0 is
// 443). A connection is passed through only if every policy of the chain
// that does not deny the host marks it pass-through; a token's claims only
// filter and have no say. So a narrower policy may deny a pass-through
// host, but cannot turn a host the operator intercepts into pass-through;
// when the policies disagree the connection is intercepted, and every rule
// of every policy applies to each of its requests (a pass-through entry
// allows them all). As in Decide, an enforcing policy's denial blocks and
// an audit policy's marks the verdict would-block (a would-block
// pass-through is spliced). Ports are checked here only for a
// pass-through: an intercepted connection's requests are decided with
// their port.
func (c *Compiled) DecideTLS(host string, port uint32) TLSDecision {
	if port == 0 {
		port = defaultPort[SchemeHTTPS]
	}
	if err := canon.CheckHost(host); err != nil {
		return TLSDecision{Decision: policyv1.Decision_DECISION_DENY, Reason: "check host: " + err.Error(), Code: codeAmbiguous}
	}
	if len(c.layers) == 0 {
		return TLSDecision{Decision: policyv1.Decision_DECISION_DENY, RuleID: RuleDefault, Reason: "no policy is in force", Code: codeHost}
	}
	var pass, audited *TLSDecision
	intercept := false
	for i, l := range c.layers {
		v, d := l.decideTLS(host, port)
		d.Layer, d.Source = i, l.source
		switch v {
		case voteDeny:
			if !l.audit {
				d.Decision = policyv1.Decision_DECISION_DENY
				return d
			}
			if audited == nil {
				audited = &d
			}
		case votePass:
			pass = &d // the last reports, as in Decide
		case voteIntercept:
			intercept = true
		}
	}
	d := TLSDecision{RuleID: RulePassthroughIntercepted, Reason: "the connection is intercepted"}
	if pass != nil && !intercept {
		d = *pass
		d.Passthrough = true
	}
	d.Decision = policyv1.Decision_DECISION_ALLOW
	if audited != nil {
		a := *audited
		a.Decision, a.Passthrough = policyv1.Decision_DECISION_WOULD_BLOCK, d.Passthrough
		return a
	}
	return d
}

// decideTLS is one policy's vote on a canonical server name and port.
func (l *layer) decideTLS(host string, port uint32) (tlsVote, TLSDecision) {
	deny := func(code policyv1.DenialCode, id, format string, args ...any) (tlsVote, TLSDecision) {
		return voteDeny, TLSDecision{RuleID: id, Reason: fmt.Sprintf(format, args...), Code: code}
	}
	e, ok := l.hosts.lookup(host)
	switch {
	case l.claims:
		if !ok && !l.defaultAllow {
			return deny(codeToken, RuleTokenDomains, "the caller's token does not allow host %s (allowedDomains)", host)
		}
		return voteNeutral, TLSDecision{}
	case !ok && l.defaultAllow:
		return voteIntercept, TLSDecision{}
	case !ok:
		return deny(codeHost, RuleDefault, "host %s is not in the policy", host)
	case e.passthrough:
		if what, reason := e.endpoints.check(e.pattern, SchemeHTTPS, port); what != "" {
			return deny(codePort, e.field+"."+what, "%s", reason)
		}
		return votePass, TLSDecision{RuleID: e.field + ".passthrough", Reason: fmt.Sprintf("%s is passed through without interception", e.pattern)}
	case !e.couldAllow || !slices.Contains(e.endpoints.schemes, SchemeHTTPS):
		return deny(codeHost, e.field+".default", "no rule of %s could allow https", e.pattern)
	}
	return voteIntercept, TLSDecision{}
}
