package policy

import (
	"fmt"
	"slices"
	"strings"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// Request is what a decision looks at. The proxy sends host and path in
// canonical form (package canon). Decide checks that they are rather than
// trusting it, because a host or path in another form could skip a deny
// rule; and it refuses rather than canonicalizes them itself, because a
// second canonicalization is where the proxy and the policy would come to
// disagree about what a request means.
type Request struct {
	Method    string // uppercase; lowercase letters are uppercased
	Host      string // canonical (canon.CheckHost), without port
	Path      string // canonical (canon.CheckPath), without query
	WebSocket bool   // the request asks for a WebSocket upgrade
	Scheme    string // http or https; empty means https
	Port      uint32 // the destination port; 0 means the scheme's default
}

// Decision is the verdict on one request.
type Decision struct {
	// Action is what the policy says: ACTION_ALLOW or ACTION_DENY.
	Action policyv1.Action
	// Decision is what to do: DECISION_ALLOW, DECISION_DENY, or in audit
	// mode DECISION_WOULD_BLOCK where Action is deny.
	Decision policyv1.Decision
	// RuleID names the rule that decided: its id, or one derived from its
	// position (hosts[0].rules[1]), or the default that decided
	// (hosts[0].default, default). It is empty when the request itself was
	// malformed and no rule was consulted.
	RuleID string
	// Reason says why, for the 403 body and the network log.
	Reason string
	// Code says why in one fixed word when Action is deny (what the
	// caller would have to change), and is unset when it is allow.
	Code policyv1.DenialCode
	// Layer is the position in the chain of the policy that decided: the
	// first that denied, else the last. It is 0 for an unchained policy.
	Layer int
	// Source names where the deciding policy came from (see
	// [Compiled.From]): operator, tenant, token or inline; empty when its
	// source was never named.
	Source string
	// Rates are the rates of the allow rules of every policy of the chain
	// that allowed the request: each is kept on its own, so that a
	// narrower policy's rule cannot lift a wider one's rate.
	Rates []Rate
	// AllowedBy are the rules (or defaults) of every policy of the chain
	// that allowed the request, by layer: what a secret binding's rules
	// are checked against.
	AllowedBy []RuleRef
}

// RuleRef names a rule (or default) of one policy of a chain.
type RuleRef struct {
	Layer  int
	RuleID string
}

// Rate is an allow rule's rate (proto RuleRate): PerSecond requests a
// second, in bursts of at most Burst. RuleID and Layer name the rule, so
// its bucket is its own.
type Rate struct {
	RuleID           string
	Layer            int
	PerSecond, Burst uint32
}

// Forward reports whether the proxy should forward the request.
func (d Decision) Forward() bool {
	return d.Decision == policyv1.Decision_DECISION_ALLOW || d.Decision == policyv1.Decision_DECISION_WOULD_BLOCK
}

// Limits bound an execution's requests; 0 means no limit from the policy.
// The totals count body bytes of the whole execution.
type Limits struct {
	MaxRequests              uint32
	MaxRequestBytes          uint64
	MaxTotalRequestBytes     uint64
	MaxTotalResponseBytes    uint64
	MaxConcurrentConnections uint32
}

// Compiled is a validated policy, or a chain of them, ready to decide. It is
// immutable and safe for concurrent use. The zero value denies everything.
type Compiled struct {
	layers []*layer
	limits Limits
}

type layer struct {
	// audit turns the layer's denials into would-block verdicts; an
	// enforcing layer's denial wins over them.
	audit        bool
	source       string
	defaultAllow bool
	hosts        hostIndex[*hostEntry]
	limits       Limits
	// secrets are the policy's secret bindings.
	secrets []Binding
	// claims marks a layer of a caller's token (see Claims), which
	// decides by decideClaims; revoked are the rule ids it takes away.
	claims  bool
	revoked map[string]bool
}

type hostEntry struct {
	pattern      hostPattern
	rules        []rule
	defaultAllow bool
	defaultID    string
	couldAllow   bool
	field        string // hosts[i], the prefix of the ids the entry derives
	endpoints    endpoints
	// semicolon is whether some rule's path has a ";": only then may a
	// request path have one (see matchesLoosely).
	semicolon bool
	// passthrough: connections are spliced, not intercepted (tls.go).
	passthrough bool
}

type rule struct {
	id        string
	methods   []string // empty matches every method
	path      pathPattern
	allow     bool
	websocket bool
	reason    string
	loose     pathPattern // deny rules: path in the form matchesLoosely compares
	rate      Rate        // allow rules: PerSecond 0 means no rate
}

// Compile validates p and prepares it for deciding. The result does not
// refer to p, which the caller may change afterwards. Its error is an
// [Errors].
func Compile(p *policyv1.Policy) (*Compiled, error) {
	l, errs := compileLayer(p)
	if len(errs) > 0 {
		return nil, errs
	}
	return &Compiled{layers: []*layer{l}, limits: l.limits}, nil
}

// DenyAll is the policy an executor without a policy file uses: every
// request is denied by the rule "default".
func DenyAll() *Compiled {
	c, err := Compile(&policyv1.Policy{
		Mode:          policyv1.Mode_MODE_ENFORCE,
		DefaultAction: policyv1.Action_ACTION_DENY,
	})
	if err != nil {
		panic(fmt.Sprintf("policy: DenyAll does not compile: %v", err))
	}
	return c
}

// compileLayer validates and compiles in one walk so the two cannot
// disagree about what a policy means.
func compileLayer(p *policyv1.Policy) (*layer, Errors) {
	var c checker
	if p == nil {
		c.add("", "no policy")
		return nil, c.errs
	}
	if err := checkMode(p.GetMode()); err != nil {
		c.add("mode", "%v", err)
	}
	if err := checkAction(p.GetDefaultAction(), false); err != nil {
		c.add("default_action", "%v", err)
	}
	l := &layer{
		audit:        p.GetMode() == policyv1.Mode_MODE_AUDIT,
		defaultAllow: p.GetDefaultAction() == policyv1.Action_ACTION_ALLOW,
		hosts:        newHostIndex[*hostEntry](),
		limits: Limits{
			MaxRequests:              p.GetLimits().GetMaxRequests(),
			MaxRequestBytes:          p.GetLimits().GetMaxRequestBytes(),
			MaxTotalRequestBytes:     p.GetLimits().GetMaxTotalRequestBytes(),
			MaxTotalResponseBytes:    p.GetLimits().GetMaxTotalResponseBytes(),
			MaxConcurrentConnections: p.GetLimits().GetMaxConcurrentConnections(),
		},
	}
	if n := len(p.GetHosts()); n > MaxHosts {
		c.add("hosts", "%d hosts, at most %d are allowed", n, MaxHosts)
	}
	hostField := map[hostPattern]string{}
	ruleField := map[string]string{}
	allowRule := map[string]bool{}
	for i, hp := range p.GetHosts() {
		field := fmt.Sprintf("hosts[%d]", i)
		e := &hostEntry{
			defaultAllow: hp.GetDefaultAction() == policyv1.Action_ACTION_ALLOW,
			defaultID:    field + ".default",
			field:        field,
			endpoints:    compileEndpoints(&c, field, hp.GetSchemes(), hp.GetPorts()),
		}
		if hp.GetPassthrough() {
			compilePassthrough(&c, field, hp, e)
		}
		pat, err := parseHostPattern(hp.GetHost())
		if err != nil {
			c.add(field+".host", "%v", err)
		} else if prev, dup := hostField[pat]; dup {
			c.add(field+".host", "%s is already named by %s", pat, prev)
		} else {
			hostField[pat] = field + ".host"
			e.pattern = pat
			l.hosts.add(pat, e)
		}
		if err := checkAction(hp.GetDefaultAction(), false); err != nil {
			c.add(field+".default_action", "%v", err)
		}
		if n := len(hp.GetRules()); n > MaxRulesPerHost {
			c.add(field+".rules", "%d rules, at most %d are allowed", n, MaxRulesPerHost)
		}
		for j, r := range hp.GetRules() {
			rf := fmt.Sprintf("%s.rules[%d]", field, j)
			cr := compileRule(&c, rf, r, ruleField)
			e.rules = append(e.rules, cr)
			allowRule[cr.id] = cr.allow
			e.semicolon = e.semicolon || strings.Contains(r.GetPath(), ";")
		}
		e.couldAllow = couldAllowRules(e.rules, e.defaultAllow)
	}
	compileSecrets(&c, l, p, ruleField, allowRule)
	return l, c.errs
}

// couldAllowRules reports whether an entry with rules and a default that
// allows (or not) could allow some request: by an allow rule or the
// default that a deny rule for every method and path does not come
// before (rules decide in order, so nothing after it is reached).
func couldAllowRules(rules []rule, defaultAllow bool) bool {
	for _, ru := range rules {
		if ru.allow {
			return true
		}
		if len(ru.methods) == 0 && ru.path.matchesEvery() {
			return false
		}
	}
	return defaultAllow
}

func compileRule(c *checker, field string, r *policyv1.Rule, ruleField map[string]string) rule {
	cr := rule{
		id:        r.GetId(),
		allow:     r.GetAction() == policyv1.Action_ACTION_ALLOW,
		websocket: r.GetWebsocket(),
		reason:    r.GetReason(),
	}
	if cr.id == "" {
		cr.id = field
	} else if err := checkRuleID(cr.id); err != nil {
		c.add(field+".id", "%v", err)
	} else if prev, dup := ruleField[cr.id]; dup {
		c.add(field+".id", "%q is already the id of %s", cr.id, prev)
	} else {
		ruleField[cr.id] = field
	}
	if n := len(r.GetMethods()); n > MaxMethodsPerRule {
		c.add(field+".methods", "%d methods, at most %d are allowed", n, MaxMethodsPerRule)
	}
	seen := map[string]bool{}
	for k, m := range r.GetMethods() {
		if err := checkMethod(m); err != nil {
			c.add(fmt.Sprintf("%s.methods[%d]", field, k), "%v", err)
		} else if seen[m] {
			c.add(fmt.Sprintf("%s.methods[%d]", field, k), "%s is listed twice", m)
		}
		seen[m] = true
		cr.methods = append(cr.methods, m)
	}
	pp, err := parsePathPattern(r.GetPath())
	if err != nil {
		c.add(field+".path", "%v", err)
	}
	cr.path = pp
	if !cr.allow {
		cr.loose = pp.loosen()
	}
	if err := checkAction(r.GetAction(), true); err != nil {
		c.add(field+".action", "%v", err)
	}
	if err := checkReason(r.GetReason()); err != nil {
		c.add(field+".reason", "%v", err)
	}
	if cr.websocket && !cr.allow {
		c.add(field+".websocket", "only allow rules take websocket: deny rules match upgrades anyway")
	}
	if r.GetRate() != nil {
		cr.rate = compileRate(c, field+".rate", r.GetRate(), cr.allow)
		cr.rate.RuleID = cr.id
	}
	return cr
}

// Mode is MODE_AUDIT when some policy of the chain is in audit mode (some
// denials may be reported as would-block), else MODE_ENFORCE.
func (c *Compiled) Mode() policyv1.Mode {
	for _, l := range c.layers {
		if l.audit {
			return policyv1.Mode_MODE_AUDIT
		}
	}
	return policyv1.Mode_MODE_ENFORCE
}

// From returns c with source naming where each of its policies came from;
// decisions report it in Decision.Source. c is not changed.
func (c *Compiled) From(source string) *Compiled {
	return c.withLayers(func(l *layer) { l.source = source })
}

// Audited returns c with every policy in audit mode: its denials are
// would-block verdicts, unless an enforcing policy chained with it denies
// too. c is not changed.
func (c *Compiled) Audited() *Compiled {
	return c.withLayers(func(l *layer) { l.audit = true })
}

// Narrowed returns c with each limit of l that is tighter than c's.
func (c *Compiled) Narrowed(l Limits) *Compiled {
	n := c.withLayers(func(*layer) {})
	n.limits = n.limits.lower(l)
	return n
}

// withLayers copies c, changing each of its layers' copies by change.
func (c *Compiled) withLayers(change func(*layer)) *Compiled {
	n := &Compiled{layers: make([]*layer, len(c.layers)), limits: c.limits}
	for i, l := range c.layers {
		cp := *l
		change(&cp)
		n.layers[i] = &cp
	}
	return n
}

// Limits are the policy's limits; for a chain, the smallest non-zero ones.
func (c *Compiled) Limits() Limits { return c.limits }

// Decide answers one request. A request whose method is malformed or whose
// host or path is malformed or not in canonical form is denied in every
// mode, without consulting a rule, with a reason that says what is wrong.
func (c *Compiled) Decide(r Request) Decision {
	req, err := canonicalRequest(r)
	if err != nil {
		return Decision{
			Action:   policyv1.Action_ACTION_DENY,
			Decision: policyv1.Decision_DECISION_DENY,
			Reason:   err.Error(),
			Code:     policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST,
		}
	}
	// A zero Compiled has no layers and denies, like DenyAll.
	if len(c.layers) == 0 {
		d := deny(codeHost, RuleDefault, "no policy is in force")
		d.Decision = policyv1.Decision_DECISION_DENY
		return d
	}
	// Every layer is asked, in order, until an enforcing one denies: that
	// denial decides. An audit layer's denial is remembered (the first
	// one is reported) and the walk goes on, so an enforcing layer after
	// it still blocks.
	var d Decision
	var audited *Decision
	var allowedBy []string
	var refs []RuleRef
	var rates []Rate
	for i, l := range c.layers {
		var ld Decision
		if l.claims {
			ld = l.decideClaims(req, allowedBy)
			if ld.Action == policyv1.Action_ACTION_ALLOW && i > 0 {
				// A token grants nothing: the rule that allowed stays.
				continue
			}
		} else {
			ld = l.decide(req)
		}
		ld.Layer, ld.Source = i, l.source
		if ld.Action == policyv1.Action_ACTION_ALLOW {
			for _, r := range ld.Rates {
				r.Layer = i
				rates = append(rates, r)
			}
			d = ld
			allowedBy = append(allowedBy, ld.RuleID)
			refs = append(refs, RuleRef{Layer: i, RuleID: ld.RuleID})
			continue
		}
		if !l.audit {
			ld.Decision = policyv1.Decision_DECISION_DENY
			return ld
		}
		if audited == nil {
			audited = &ld
		}
	}
	if audited != nil {
		audited.Decision = policyv1.Decision_DECISION_WOULD_BLOCK
		audited.Rates = rates
		return *audited
	}
	d.Decision = policyv1.Decision_DECISION_ALLOW
	d.Rates, d.AllowedBy = rates, refs
	return d
}

// CouldAllowHost reports whether some request to host could be forwarded,
// so the proxy's DNS can answer NXDOMAIN for names no rule could allow. In
// audit mode every valid host could be (it would be forwarded as
// would-block), so only the enforcing policies of a chain are asked. A host that is not canonical (canon.CheckHost) never could.
func (c *Compiled) CouldAllowHost(host string) bool { return c.couldAllow(host, "") }

// CouldAllowScheme is CouldAllowHost for requests over scheme alone: a host
// entry that does not list scheme could allow none of them. The proxy asks
// it with https for a TLS server name before it mints a leaf. Ports are
// left to each request's decision, whose reason names the ports allowed.
func (c *Compiled) CouldAllowScheme(host, scheme string) bool { return c.couldAllow(host, scheme) }

// couldAllow is CouldAllowHost, restricted to scheme unless it is empty.
func (c *Compiled) couldAllow(host, scheme string) bool {
	if canon.CheckHost(host) != nil {
		return false
	}
	h := host
	if len(c.layers) == 0 {
		return false
	}
	for _, l := range c.layers {
		if l.audit {
			continue
		}
		e, ok := l.hosts.lookup(h)
		if ok && (!e.couldAllow || scheme != "" && !slices.Contains(e.endpoints.schemes, scheme)) || !ok && !l.defaultAllow {
			return false
		}
	}
	return true
}

func canonicalRequest(r Request) (Request, error) {
	m, err := canonicalMethod(r.Method)
	if err != nil {
		return Request{}, err
	}
	if err := canon.CheckHost(r.Host); err != nil {
		return Request{}, fmt.Errorf("check host: %w", err)
	}
	if err := canon.CheckPath(r.Path); err != nil {
		return Request{}, fmt.Errorf("check path %q: %w", r.Path, err)
	}
	scheme, port, err := canonicalEndpoint(r.Scheme, r.Port)
	if err != nil {
		return Request{}, err
	}
	return Request{Method: m, Host: r.Host, Path: r.Path, WebSocket: r.WebSocket, Scheme: scheme, Port: port}, nil
}

// canonicalMethod uppercases like the proxy does, so "post" cannot pass a
// rule that denies POST.
func canonicalMethod(m string) (string, error) {
	if m == "" || len(m) > maxMethodLen {
		return "", fmt.Errorf("method %q is invalid", m)
	}
	lower := false
	for i := 0; i < len(m); i++ {
		if !isTokenByte(m[i]) {
			return "", fmt.Errorf("method %q is invalid", m)
		}
		lower = lower || 'a' <= m[i] && m[i] <= 'z'
	}
	if lower {
		m = strings.ToUpper(m)
	}
	return m, nil
}

// decide applies one policy to a canonical request. The most specific host
// entry decides alone: its default applies rather than a less specific
// entry's or the policy's.
func (l *layer) decide(r Request) Decision {
	e, ok := l.hosts.lookup(r.Host)
	if !ok {
		if l.defaultAllow {
			if r.WebSocket {
				return deny(codeWebSocket, RuleDefault, "WebSocket upgrades to %s need an allow rule with websocket: true; the host is not in the policy", r.Host)
			}
			return allow(RuleDefault, "host %s is not in the policy, whose default allows it", r.Host)
		}
		return deny(codeHost, RuleDefault, "host %s is not in the policy", r.Host)
	}
	if what, reason := e.endpoints.check(e.pattern, r.Scheme, r.Port); what != "" {
		return deny(codePort, e.field+"."+what, "%s", reason)
	}
	if !e.semicolon && strings.Contains(r.Path, ";") {
		return deny(codeAmbiguous, e.field+".path", "path %q has a \";\", which servers read differently (a path parameter to Tomcat and Spring, a literal to others); no rule of %s names a path with one", r.Path, e.pattern)
	}
	loose := loosePath(r.Path)
	// What the allow rules that did not decide had in common with the
	// request, for the code of a default's denial.
	var pathMatched, upgradeSkipped bool
	for _, ru := range e.rules {
		if !ru.matches(r, loose) {
			pathMatched = pathMatched || ru.allow && ru.path.match(r.Path)
			continue
		}
		if ru.allow && r.WebSocket && !ru.websocket {
			// An allow rule that does not name upgrades lets them fall
			// through to later rules, and in the end to a deny.
			upgradeSkipped = true
			continue
		}
		reason := ru.reason
		if reason == "" {
			verb := "denies"
			if ru.allow {
				verb = "allows"
			}
			reason = fmt.Sprintf("rule %s %s %s %s on %s", ru.id, verb, r.Method, r.Path, e.pattern)
		}
		if ru.allow {
			d := Decision{Action: policyv1.Action_ACTION_ALLOW, RuleID: ru.id, Reason: reason}
			if ru.rate.PerSecond > 0 {
				d.Rates = []Rate{ru.rate}
			}
			return d
		}
		return Decision{Action: policyv1.Action_ACTION_DENY, RuleID: ru.id, Reason: reason, Code: policyv1.DenialCode_DENIAL_CODE_RULE_DENIED}
	}
	if !e.defaultAllow {
		code := codePath
		switch {
		case upgradeSkipped:
			code = codeWebSocket
		case pathMatched:
			code = codeMethod
		}
		return deny(code, e.defaultID, "no rule of %s matches %s %s", e.pattern, r.Method, r.Path)
	}
	if r.WebSocket {
		return deny(codeWebSocket, e.defaultID, "WebSocket upgrades to %s need an allow rule with websocket: true; none matches %s", e.pattern, r.Path)
	}
	return allow(e.defaultID, "no rule of %s matches %s %s, and the host's default allows it", e.pattern, r.Method, r.Path)
}

// matches compares allow rules' paths exactly. A deny rule also matches
// loosely (see loosePath), because a server may route the loose variants to
// the handler the rule means to deny.
func (ru *rule) matches(r Request, loose string) bool {
	if len(ru.methods) > 0 && !slices.Contains(ru.methods, r.Method) {
		return false
	}
	return ru.path.match(r.Path) || !ru.allow && ru.loose.match(loose)
}

func allow(id, format string, args ...any) Decision {
	return Decision{Action: policyv1.Action_ACTION_ALLOW, RuleID: id, Reason: fmt.Sprintf(format, args...)}
}

// Denial codes of the decisions decide makes, short for the calls.
const (
	codeHost      = policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED
	codeMethod    = policyv1.DenialCode_DENIAL_CODE_METHOD_NOT_ALLOWED
	codePath      = policyv1.DenialCode_DENIAL_CODE_PATH_NOT_ALLOWED
	codePort      = policyv1.DenialCode_DENIAL_CODE_PORT_NOT_ALLOWED
	codeWebSocket = policyv1.DenialCode_DENIAL_CODE_WEBSOCKET_NOT_ALLOWED
	codeAmbiguous = policyv1.DenialCode_DENIAL_CODE_AMBIGUOUS_REQUEST
	codeToken     = policyv1.DenialCode_DENIAL_CODE_TOKEN_DENIED
)

func deny(code policyv1.DenialCode, id, format string, args ...any) Decision {
	return Decision{Action: policyv1.Action_ACTION_DENY, RuleID: id, Reason: fmt.Sprintf(format, args...), Code: code}
}
