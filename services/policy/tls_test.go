package policy

import (
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// The operator passes pinned.example through (on 443 and 8443), and
// intercepts api.stripe.com.
const passOperatorYAML = `version: 1
hosts:
  - host: pinned.example
    passthrough: true
    ports: [443, 8443]
  - host: other-pinned.example
    passthrough: true
  - host: api.stripe.com
    default: allow
`

func TestDecideTLSPassthrough(t *testing.T) {
	op := mustParse(t, passOperatorYAML).From("operator")
	claims, err := Claims([]string{"pinned.example", "api.stripe.com"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		c        *Compiled
		host     string
		port     uint32
		decision policyv1.Decision
		pass     bool
		rule     string
		code     policyv1.DenialCode
	}{
		{name: "marked: spliced", c: op, host: "pinned.example", port: 443, decision: allowD, pass: true, rule: "hosts[0].passthrough"},
		{name: "port 0 is 443", c: op, host: "pinned.example", decision: allowD, pass: true, rule: "hosts[0].passthrough"},
		{name: "a named port", c: op, host: "pinned.example", port: 8443, decision: allowD, pass: true, rule: "hosts[0].passthrough"},
		{name: "a port not named", c: op, host: "pinned.example", port: 9443, decision: denyD, rule: "hosts[0].ports", code: codePort},
		{name: "no ports: 443 only", c: op, host: "other-pinned.example", port: 8443, decision: denyD, rule: "hosts[1].ports", code: codePort},
		{name: "not marked: intercepted", c: op, host: "api.stripe.com", port: 443, decision: allowD, rule: RulePassthroughIntercepted},
		{name: "not in the policy", c: op, host: "evil.example", port: 443, decision: denyD, rule: RuleDefault, code: codeHost},
		{name: "not canonical", c: op, host: "Pinned.example", port: 443, decision: denyD, code: codeAmbiguous},
		{name: "a token's claims only filter", c: Chain(op, claims), host: "pinned.example", port: 443, decision: allowD, pass: true, rule: "hosts[0].passthrough"},
		{name: "a token's claims deny", c: Chain(op, claims), host: "other-pinned.example", port: 443, decision: denyD, rule: RuleTokenDomains, code: codeToken},
		{name: "zero policy denies", c: &Compiled{}, host: "pinned.example", port: 443, decision: denyD, rule: RuleDefault, code: codeHost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.c.DecideTLS(tt.host, tt.port)
			if d.Decision != tt.decision || d.Passthrough != tt.pass || d.RuleID != tt.rule || d.Code != tt.code {
				t.Errorf("DecideTLS(%s, %d) = %v pass=%v by %q code %v (%s), want %v pass=%v by %q code %v",
					tt.host, tt.port, d.Decision, d.Passthrough, d.RuleID, d.Code, d.Reason, tt.decision, tt.pass, tt.rule, tt.code)
			}
		})
	}
}

// TestDecideTLSChain: pass-through holds only when the deciding policies
// agree; a narrower policy may deny, never switch interception and
// pass-through; an audit policy's denial marks a pass-through would-block.
func TestDecideTLSChain(t *testing.T) {
	op := mustParse(t, passOperatorYAML).From("operator")
	tests := []struct {
		name     string
		narrower string
		host     string
		decision policyv1.Decision
		pass     bool
		rule     string
		layer    int
	}{
		{name: "both mark it", host: "pinned.example", decision: allowD, pass: true, rule: "hosts[0].passthrough", layer: 1,
			narrower: "version: 1\nhosts:\n  - host: pinned.example\n    passthrough: true\n"},
		{name: "narrower denies the host", host: "pinned.example", decision: denyD, rule: RuleDefault, layer: 1,
			narrower: "version: 1\nhosts:\n  - host: api.stripe.com\n    default: allow\n"},
		{name: "narrower intercepts the operator's pass-through", host: "pinned.example", decision: allowD, rule: RulePassthroughIntercepted,
			narrower: "version: 1\nhosts:\n  - host: pinned.example\n    default: allow\n"},
		{name: "narrower's default intercepts too", host: "pinned.example", decision: allowD, rule: RulePassthroughIntercepted,
			narrower: "version: 1\ndefault: allow\n"},
		{name: "narrower cannot pass through what the operator intercepts", host: "api.stripe.com", decision: allowD, rule: RulePassthroughIntercepted,
			narrower: "version: 1\nhosts:\n  - host: api.stripe.com\n    passthrough: true\n"},
		{name: "audit narrower's denial: spliced, would-block", host: "pinned.example", decision: wouldD, pass: true, rule: RuleDefault, layer: 1,
			narrower: "version: 1\nmode: audit\nhosts:\n  - host: api.stripe.com\n    default: allow\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Chain(op, mustParse(t, tt.narrower).From("tenant")).DecideTLS(tt.host, 443)
			if d.Decision != tt.decision || d.Passthrough != tt.pass || d.RuleID != tt.rule || d.Layer != tt.layer {
				t.Errorf("DecideTLS(%s) = %v pass=%v by %q at layer %d (%s), want %v pass=%v by %q at %d",
					tt.host, d.Decision, d.Passthrough, d.RuleID, d.Layer, d.Reason, tt.decision, tt.pass, tt.rule, tt.layer)
			}
		})
	}
	// Intercepted, a pass-through entry allows every request (no rule can
	// apply to it), so only the other policies' rules decide.
	c := Chain(op, mustParse(t, "version: 1\nhosts:\n  - host: pinned.example\n    rules:\n      - { path: /ok, action: allow }\n"))
	if d := c.Decide(Request{Method: "GET", Host: "pinned.example", Path: "/ok"}); d.Decision != allowD {
		t.Errorf("GET /ok on the intercepted pass-through host: %v by %s", d.Decision, d.RuleID)
	}
	if d := c.Decide(Request{Method: "GET", Host: "pinned.example", Path: "/no"}); d.Decision != denyD || d.Layer != 1 {
		t.Errorf("GET /no on the intercepted pass-through host: %v by %s at %d, want the narrower's deny", d.Decision, d.RuleID, d.Layer)
	}
	// An audit-mode operator: a pass-through it would block is spliced.
	audit := mustParse(t, "version: 1\nmode: audit\nhosts:\n  - host: pinned.example\n    passthrough: true\n")
	if d := audit.DecideTLS("pinned.example", 8443); d.Decision != wouldD || d.Passthrough {
		t.Errorf("audit, port not named: %v pass=%v, want would-block intercepted (no policy passes it through)", d.Decision, d.Passthrough)
	}
}
