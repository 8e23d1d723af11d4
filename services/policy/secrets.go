package policy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// Bounds on a policy's secret bindings.
const (
	MaxSecretBindings   = 64
	MaxHostsPerBinding  = 16
	MaxRulesPerBinding  = 64
	maxPlaceholderBytes = 32
	maxTemplateBytes    = 256
	secretToken         = "{{secret}}"
)

var (
	secretName        = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)
	placeholderPrefix = regexp.MustCompile(`^[A-Za-z0-9_-]*$`)
	// headerName is an HTTP token (RFC 9110 5.6.2).
	headerName = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	queryName  = regexp.MustCompile(`^[A-Za-z0-9_.~-]{1,64}$`)
)

// IsSecretName reports whether s can name a secret: a-z, 0-9 and _.-, at
// most 64, starting with a letter or digit (safe as a file name and in a
// log line).
func IsSecretName(s string) bool { return secretName.MatchString(s) }

// headersNeverBound are the headers a secret cannot be placed in: the
// ones that frame or route the request.
var headersNeverBound = []string{"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "cookie"}

// PlacementKind says where a request carries a secret.
type PlacementKind int

// Where a secret can be placed.
const (
	PlaceHeader PlacementKind = iota + 1
	PlaceBasic
	PlaceQuery
)

// Placement is where a binding puts its secret: in header Name (its value
// Template with the secret for {{secret}}), as a basic-auth credential, or
// as query parameter Name.
type Placement struct {
	Kind     PlacementKind
	Name     string // the header (canonical case kept as written) or query parameter
	Template string // header only; "{{secret}}" when the policy left it empty
}

// Binding is one secret's binding, compiled.
type Binding struct {
	Secret            string
	PlaceholderPrefix string
	Placement         Placement
	hosts             hostIndex[bool]
	rules             []string
	layer             int
}

// Render is the header value the binding's template makes of value.
func (p Placement) Render(value string) string {
	return strings.Replace(p.Template, secretToken, value, 1)
}

// compileSecrets checks and compiles p's bindings into l; ruleField holds
// the policy's rule ids, which a binding's rules must name.
func compileSecrets(c *checker, l *layer, p *policyv1.Policy, ruleField map[string]string, allowRule map[string]bool) {
	if n := len(p.GetSecrets()); n > MaxSecretBindings {
		c.add("secrets", "%d bindings, at most %d are allowed", n, MaxSecretBindings)
		return
	}
	seen := map[string]string{}
	for i, sb := range p.GetSecrets() {
		field := fmt.Sprintf("secrets[%d]", i)
		b := Binding{Secret: sb.GetSecret(), PlaceholderPrefix: sb.GetPlaceholderPrefix(), hosts: newHostIndex[bool]()}
		switch {
		case !secretName.MatchString(b.Secret):
			c.add(field+".secret", "%q is not a secret name (a-z, 0-9 and _.-, at most 64)", b.Secret)
		case seen[b.Secret] != "":
			c.add(field+".secret", "%q is already bound by %s", b.Secret, seen[b.Secret])
		default:
			seen[b.Secret] = field
		}
		if len(b.PlaceholderPrefix) > maxPlaceholderBytes || !placeholderPrefix.MatchString(b.PlaceholderPrefix) {
			c.add(field+".placeholder_prefix", "must be at most %d letters, digits, _ and -", maxPlaceholderBytes)
		}
		switch n := len(sb.GetHosts()); {
		case n == 0:
			c.add(field+".hosts", "name at least one host the secret may go to")
		case n > MaxHostsPerBinding:
			c.add(field+".hosts", "%d hosts, at most %d are allowed", n, MaxHostsPerBinding)
		}
		for j, h := range sb.GetHosts() {
			pat, err := parseHostPattern(h)
			if err != nil {
				c.add(fmt.Sprintf("%s.hosts[%d]", field, j), "%v", err)
				continue
			}
			if !b.hosts.add(pat, true) {
				c.add(fmt.Sprintf("%s.hosts[%d]", field, j), "%s is listed twice", pat)
			}
			if pt, ok := passthroughOverlapping(l.hosts, pat); ok {
				c.add(fmt.Sprintf("%s.hosts[%d]", field, j), "%s overlaps %s, which is passed through: the proxy never reads its requests, so it cannot place a secret in them", pat, pt)
			}
		}
		if n := len(sb.GetRules()); n > MaxRulesPerBinding {
			c.add(field+".rules", "%d rules, at most %d are allowed", n, MaxRulesPerBinding)
		}
		for j, id := range sb.GetRules() {
			rf := fmt.Sprintf("%s.rules[%d]", field, j)
			switch {
			case ruleField[id] == "":
				c.add(rf, "%q is not the id of a rule of this policy", id)
			case !allowRule[id]:
				c.add(rf, "rule %q denies: only requests an allow rule lets through can carry a secret", id)
			default:
				b.rules = append(b.rules, id)
			}
		}
		switch pl := sb.GetPlacement().(type) {
		case *policyv1.SecretBinding_Header:
			name, tmpl := pl.Header.GetName(), pl.Header.GetTemplate()
			if tmpl == "" {
				tmpl = secretToken
			}
			switch {
			case !headerName.MatchString(name):
				c.add(field+".header.name", "%q is not a header name", name)
			case slices.Contains(headersNeverBound, strings.ToLower(name)):
				c.add(field+".header.name", "%s frames or routes the request; a secret cannot go there", name)
			}
			switch {
			case strings.Count(tmpl, secretToken) != 1:
				c.add(field+".header.template", "must hold %s exactly once", secretToken)
			case len(tmpl) > maxTemplateBytes || strings.ContainsAny(tmpl, "\r\n\x00"):
				c.add(field+".header.template", "must be at most %d bytes on one line", maxTemplateBytes)
			}
			b.Placement = Placement{Kind: PlaceHeader, Name: name, Template: tmpl}
		case *policyv1.SecretBinding_Basic:
			b.Placement = Placement{Kind: PlaceBasic}
		case *policyv1.SecretBinding_Query:
			if !queryName.MatchString(pl.Query) {
				c.add(field+".query", "%q is not a query parameter name (letters, digits and _.~-, at most 64)", pl.Query)
			}
			b.Placement = Placement{Kind: PlaceQuery, Name: pl.Query}
		default:
			c.add(field, "say where the secret goes: header, basic or query")
		}
		l.secrets = append(l.secrets, b)
	}
}

// passthroughOverlapping returns a pass-through host entry's pattern that
// matches some host pat matches.
func passthroughOverlapping(hosts hostIndex[*hostEntry], pat hostPattern) (hostPattern, bool) {
	under := func(name, parent string) bool { return strings.HasSuffix(name, "."+parent) }
	for name, e := range hosts.exact {
		if e.passthrough && (name == pat.name && !pat.wildcard || pat.wildcard && under(name, pat.name)) {
			return e.pattern, true
		}
	}
	for name, e := range hosts.wildcard {
		if !e.passthrough {
			continue
		}
		if pat.wildcard && (name == pat.name || under(name, pat.name) || under(pat.name, name)) || !pat.wildcard && under(pat.name, name) {
			return e.pattern, true
		}
	}
	return hostPattern{}, false
}

// SecretBinding returns the binding of secret in the chain: the first
// policy that binds it. Only the executor's and the tenants' policies may
// bind (the executor refuses an inline policy with secrets).
func (c *Compiled) SecretBinding(secret string) (Binding, bool) {
	for i, l := range c.layers {
		for _, b := range l.secrets {
			if b.Secret == secret {
				b.layer = i
				return b, true
			}
		}
	}
	return Binding{}, false
}

// HasSecrets reports whether the policy binds any secret.
func (c *Compiled) HasSecrets() bool {
	for _, l := range c.layers {
		if len(l.secrets) > 0 {
			return true
		}
	}
	return false
}

// Misfit says why a request r, decided d by this chain, may not carry b's
// secret at p, or is empty when it may: only an allowed request (not a
// would-block one: it is one a policy would deny), to one of b's hosts,
// allowed (when b names rules) by one of them in b's policy, with the
// secret where b puts it. The reason names the secret and what the request
// would have to change, never another binding or rule.
func (b Binding) Misfit(r Request, d Decision, p Placement) string {
	if d.Decision != policyv1.Decision_DECISION_ALLOW {
		return fmt.Sprintf("secret %s goes only into requests the policies allow, and a policy in audit mode would block this one", b.Secret)
	}
	if p.Kind != b.Placement.Kind || !samePlace(p, b.Placement) {
		return fmt.Sprintf("secret %s goes %s, not %s", b.Secret, b.Placement, p)
	}
	if _, ok := b.hosts.lookup(r.Host); !ok {
		return fmt.Sprintf("secret %s may not go to %s", b.Secret, r.Host)
	}
	if len(b.rules) == 0 {
		return ""
	}
	for _, a := range d.AllowedBy {
		if a.Layer == b.layer && slices.Contains(b.rules, a.RuleID) {
			return ""
		}
	}
	return fmt.Sprintf("secret %s may not go with this request: the rule that allowed it is not one its binding names", b.Secret)
}

// SecretFits reports whether Misfit finds nothing wrong.
func (b Binding) SecretFits(r Request, d Decision, p Placement) bool { return b.Misfit(r, d, p) == "" }

func samePlace(p, q Placement) bool {
	switch p.Kind {
	case PlaceHeader:
		return strings.EqualFold(p.Name, q.Name)
	case PlaceQuery:
		return p.Name == q.Name
	}
	return true
}

// String says where p puts a secret, for a reason: "in header
// Authorization", "in basic credentials", "in query parameter key", "in
// the path".
func (p Placement) String() string {
	switch p.Kind {
	case PlaceHeader:
		return "in header " + p.Name
	case PlaceBasic:
		return "in basic credentials"
	case PlaceQuery:
		return "in query parameter " + p.Name
	}
	return "in the path"
}
