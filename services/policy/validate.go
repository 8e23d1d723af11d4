package policy

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// Size bounds keep a policy something a person can read and a request cheap
// to decide.
const (
	MaxHosts          = 256
	MaxRulesPerHost   = 256
	MaxMethodsPerRule = 16
	maxMethodLen      = 32
	maxRuleIDLen      = 128
	maxReasonLen      = 512
	// MaxRatePerSecond bounds a rule's rate and burst: beyond it a rate
	// bounds nothing the proxy's per-source limits do not.
	MaxRatePerSecond = 10000
)

// RuleDefault is the rule id of a decision made by the policy's default.
const RuleDefault = "default"

// FieldError is one problem with a policy: the field, as a path of proto
// field names (hosts[1].rules[0].path), and what is wrong with it. Line is
// the line of a YAML file it was found on, 0 when not known.
type FieldError struct {
	Field  string
	Reason string
	Line   int
}

func (e FieldError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// Errors is every problem found in a policy, in field order. The executor
// turns them into InvalidArgument field violations.
type Errors []FieldError

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

// Validate checks p and returns nil or an [Errors] listing every problem.
func Validate(p *policyv1.Policy) error {
	if _, errs := compileLayer(p); len(errs) > 0 {
		return errs
	}
	return nil
}

// checker collects field errors as compileLayer walks a policy.
type checker struct{ errs Errors }

func (c *checker) add(field, format string, args ...any) {
	c.errs = append(c.errs, FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
}

func checkMode(m policyv1.Mode) error {
	if _, ok := policyv1.Mode_name[int32(m)]; !ok {
		return fmt.Errorf("unknown mode %d", m)
	}
	return nil
}

func checkAction(a policyv1.Action, required bool) error {
	if _, ok := policyv1.Action_name[int32(a)]; !ok {
		return fmt.Errorf("unknown action %d", a)
	}
	if required && a == policyv1.Action_ACTION_UNSPECIFIED {
		return errors.New("required: allow or deny")
	}
	return nil
}

// checkMethod accepts an RFC 9110 token with no lowercase letters: the proxy
// uppercases methods, so a lowercase rule could never match.
func checkMethod(m string) error {
	if m == "" {
		return errors.New("empty method")
	}
	if len(m) > maxMethodLen {
		return fmt.Errorf("longer than %d bytes", maxMethodLen)
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if 'a' <= c && c <= 'z' {
			return fmt.Errorf("method %q must be uppercase (%s)", m, strings.ToUpper(m))
		}
		if !isTokenByte(c) {
			return fmt.Errorf("method %q has invalid character %q", m, c)
		}
	}
	return nil
}

func isTokenByte(c byte) bool {
	if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// checkRuleID keeps ids to a set that cannot collide with derived ids
// (hosts[0].rules[1]) and reads well in logs.
func checkRuleID(id string) error {
	if len(id) > maxRuleIDLen {
		return fmt.Errorf("longer than %d bytes", maxRuleIDLen)
	}
	if id == RuleDefault {
		return fmt.Errorf("%q is reserved for the policy default", id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || strings.IndexByte("._:-", c) < 0) {
			return fmt.Errorf("id %q: use letters, digits and . _ : - (starting with a letter or digit)", id)
		}
	}
	return nil
}

// checkReason keeps reasons printable: they end up in 403 bodies and log
// lines, where a newline could forge an entry.
func checkReason(r string) error {
	if len(r) > maxReasonLen {
		return fmt.Errorf("longer than %d bytes", maxReasonLen)
	}
	if !utf8.ValidString(r) {
		return errors.New("not valid UTF-8")
	}
	for _, c := range r {
		if unicode.IsControl(c) {
			return fmt.Errorf("has control character %U", c)
		}
	}
	return nil
}

// compileRate checks a rule's rate: only allow rules have one (a deny
// rule's requests are never forwarded), per_second from 1 to
// MaxRatePerSecond, burst at most that (0 means per_second).
func compileRate(c *checker, field string, r *policyv1.RuleRate, allow bool) Rate {
	if !allow {
		c.add(field, "only allow rules take a rate: a deny rule forwards nothing")
	}
	ps, burst := r.GetPerSecond(), r.GetBurst()
	if ps == 0 || ps > MaxRatePerSecond {
		c.add(field+".per_second", "%d is not a rate: use 1 to %d requests a second", ps, MaxRatePerSecond)
	}
	if burst > MaxRatePerSecond {
		c.add(field+".burst", "%d is more than %d", burst, MaxRatePerSecond)
	}
	if burst == 0 {
		burst = ps
	}
	return Rate{PerSecond: ps, Burst: burst}
}
