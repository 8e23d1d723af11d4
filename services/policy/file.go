package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
)

// FileVersion is the version of the file format this package reads and
// writes. A file must say it: a future format may mean different things by
// the same keys.
const FileVersion = 1

// Load reads and parses a policy file.
func Load(path string) (*policyv1.Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("load policy %s: %w", path, err)
	}
	return p, nil
}

// Parse reads a policy file and validates it. Keys it does not know,
// repeated keys, values of the wrong type and YAML anchors are errors. The
// error wraps an [Errors] (field paths in proto field names, with lines)
// unless the YAML itself is malformed.
func Parse(data []byte) (*policyv1.Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("parse policy: %w", Errors{{Reason: "empty policy file"}})
		}
		return nil, fmt.Errorf("parse policy: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, fmt.Errorf("parse policy: %w", err)
		}
		return nil, fmt.Errorf("parse policy: %w", Errors{{Reason: "more than one YAML document", Line: extra.Line}})
	}
	d := &fileDecoder{lines: map[string]int{}}
	p := d.policy(doc.Content[0])
	if len(d.errs) > 0 {
		return nil, fmt.Errorf("parse policy: %w", d.errs)
	}
	if err := Validate(p); err != nil {
		var errs Errors
		errors.As(err, &errs)
		for i := range errs {
			errs[i].Line = d.lineOf(errs[i].Field)
		}
		return nil, fmt.Errorf("parse policy: %w", errs)
	}
	return p, nil
}

// fileDecoder walks the YAML node tree by hand rather than unmarshalling
// into structs, so every error can name its field and line.
type fileDecoder struct {
	errs  Errors
	lines map[string]int
}

func (d *fileDecoder) fail(field string, n *yaml.Node, format string, args ...any) {
	d.errs = append(d.errs, FieldError{Field: field, Reason: fmt.Sprintf(format, args...), Line: n.Line})
}

// lineOf finds the line of field or, when the field was absent from the
// file, of the nearest enclosing one.
func (d *fileDecoder) lineOf(field string) int {
	for {
		if l, ok := d.lines[field]; ok {
			return l
		}
		i := strings.LastIndexAny(field, ".[")
		if i < 0 {
			return d.lines[""]
		}
		field = field[:i]
	}
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// mapping calls fn for each key of a mapping node; fn reports whether it
// knows the key. A null node is an empty mapping.
func (d *fileDecoder) mapping(field string, n *yaml.Node, known string, fn func(key string, v *yaml.Node) bool) {
	d.lines[field] = n.Line
	if isNull(n) || !d.kind(field, n, yaml.MappingNode, "a mapping") {
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag != "!!str" {
			d.fail(field, k, "keys must be strings")
			continue
		}
		if seen[k.Value] {
			d.fail(field, k, "key %q is repeated", k.Value)
			continue
		}
		seen[k.Value] = true
		if !fn(k.Value, v) {
			d.fail(field, k, "unknown key %q (known: %s)", k.Value, known)
		}
	}
}

func (d *fileDecoder) kind(field string, n *yaml.Node, want yaml.Kind, what string) bool {
	switch {
	case n.Kind == yaml.AliasNode:
		d.fail(field, n, "YAML aliases are not supported")
		return false
	case n.Kind != want:
		d.fail(field, n, "must be %s", what)
		return false
	}
	return true
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func (d *fileDecoder) str(field string, n *yaml.Node) string {
	d.lines[field] = n.Line
	if isNull(n) || !d.kind(field, n, yaml.ScalarNode, "a string") {
		return ""
	}
	if n.Tag != "!!str" {
		d.fail(field, n, "must be a string, not %s (quote it)", strings.TrimPrefix(n.Tag, "!!"))
		return ""
	}
	return n.Value
}

func (d *fileDecoder) uint(field string, n *yaml.Node, limit uint64) uint64 {
	d.lines[field] = n.Line
	if isNull(n) || !d.kind(field, n, yaml.ScalarNode, "a number") {
		return 0
	}
	var v uint64
	if n.Tag != "!!int" || n.Decode(&v) != nil {
		d.fail(field, n, "must be a whole number from 0 to %d", limit)
		return 0
	}
	if v > limit {
		d.fail(field, n, "%d is more than %d", v, limit)
		return 0
	}
	return v
}

func (d *fileDecoder) policy(n *yaml.Node) *policyv1.Policy {
	p := &policyv1.Policy{}
	version := false
	d.mapping("", n, "version, mode, default, hosts, limits, secrets", func(key string, v *yaml.Node) bool {
		switch key {
		case "version":
			version = true
			before := len(d.errs)
			if ver := d.uint("version", v, math.MaxInt32); ver != FileVersion && len(d.errs) == before {
				d.fail("version", v, "version %d is not supported: this build reads version %d", ver, FileVersion)
			}
		case "mode":
			s := d.str("mode", v)
			switch s {
			case "", "enforce":
				if s != "" {
					p.Mode = policyv1.Mode_MODE_ENFORCE
				}
			case "audit":
				p.Mode = policyv1.Mode_MODE_AUDIT
			default:
				d.fail("mode", v, "%q is not a mode: use enforce or audit", s)
			}
		case "default":
			p.DefaultAction = d.action("default_action", v)
		case "hosts":
			d.list("hosts", v, func(f string, n *yaml.Node) { p.Hosts = append(p.Hosts, d.host(f, n)) })
		case "limits":
			p.Limits = d.limits("limits", v)
		case "secrets":
			d.list("secrets", v, func(f string, n *yaml.Node) { p.Secrets = append(p.Secrets, d.secret(f, n)) })
		default:
			return false
		}
		return true
	})
	if !version {
		d.fail("version", n, "required: start the file with \"version: %d\"", FileVersion)
	}
	return p
}

func (d *fileDecoder) action(field string, n *yaml.Node) policyv1.Action {
	switch s := d.str(field, n); s {
	case "":
		return policyv1.Action_ACTION_UNSPECIFIED
	case "allow":
		return policyv1.Action_ACTION_ALLOW
	case "deny":
		return policyv1.Action_ACTION_DENY
	default:
		d.fail(field, n, "%q is not an action: use allow or deny", s)
		return policyv1.Action_ACTION_UNSPECIFIED
	}
}

// list records where the list at field is and calls each with every
// item's field name (field[i]) and node. A null list is empty; anything
// but a list is an error.
func (d *fileDecoder) list(field string, v *yaml.Node, each func(item string, n *yaml.Node)) {
	d.lines[field] = v.Line
	if isNull(v) || !d.kind(field, v, yaml.SequenceNode, "a list") {
		return
	}
	for i, n := range v.Content {
		each(fmt.Sprintf("%s[%d]", field, i), n)
	}
}

func (d *fileDecoder) host(field string, n *yaml.Node) *policyv1.HostPolicy {
	h := &policyv1.HostPolicy{}
	d.mapping(field, n, "host, rules, default, schemes, ports, passthrough", func(key string, v *yaml.Node) bool {
		switch key {
		case "host":
			h.Host = d.str(field+".host", v)
		case "schemes":
			d.list(field+".schemes", v, func(f string, n *yaml.Node) { h.Schemes = append(h.Schemes, d.str(f, n)) })
		case "ports":
			d.list(field+".ports", v, func(f string, n *yaml.Node) { h.Ports = append(h.Ports, uint32(d.uint(f, n, math.MaxUint32))) })
		case "default":
			h.DefaultAction = d.action(field+".default_action", v)
		case "rules":
			d.list(field+".rules", v, func(f string, n *yaml.Node) { h.Rules = append(h.Rules, d.rule(f, n)) })
		case "passthrough":
			d.boolean(field+".passthrough", v, &h.Passthrough)
		default:
			return false
		}
		return true
	})
	return h
}

// boolean reads true or false (YAML 1.2: not yes, no, on or off) into b.
func (d *fileDecoder) boolean(field string, v *yaml.Node, b *bool) {
	d.lines[field] = v.Line
	if isNull(v) || !d.kind(field, v, yaml.ScalarNode, "true or false") {
		return
	}
	if v.Tag != "!!bool" || v.Decode(b) != nil {
		d.fail(field, v, "must be true or false")
	}
}

func (d *fileDecoder) rule(field string, n *yaml.Node) *policyv1.Rule {
	r := &policyv1.Rule{}
	d.mapping(field, n, "id, methods, path, action, reason, websocket, rate", func(key string, v *yaml.Node) bool {
		switch key {
		case "id":
			r.Id = d.str(field+".id", v)
		case "methods":
			d.list(field+".methods", v, func(f string, n *yaml.Node) { r.Methods = append(r.Methods, d.str(f, n)) })
		case "path":
			r.Path = d.str(field+".path", v)
		case "action":
			r.Action = d.action(field+".action", v)
		case "reason":
			r.Reason = d.str(field+".reason", v)
		case "websocket":
			d.boolean(field+".websocket", v, &r.Websocket)
		case "rate":
			r.Rate = d.rate(field+".rate", v)
		default:
			return false
		}
		return true
	})
	return r
}

// secret reads a secret binding:
//
//	{ secret: stripe, placeholder: sk_test_, hosts: [api.stripe.com], rules: [charges],
//	  header: { name: Authorization, template: "Bearer {{secret}}" } }
//
// with basic: true or query: NAME instead of header.
func (d *fileDecoder) secret(field string, n *yaml.Node) *policyv1.SecretBinding {
	b := &policyv1.SecretBinding{}
	d.mapping(field, n, "secret, placeholder, hosts, rules, header, basic, query", func(key string, v *yaml.Node) bool {
		switch key {
		case "secret":
			b.Secret = d.str(field+".secret", v)
		case "placeholder":
			b.PlaceholderPrefix = d.str(field+".placeholder_prefix", v)
		case "hosts":
			d.list(field+".hosts", v, func(f string, n *yaml.Node) { b.Hosts = append(b.Hosts, d.str(f, n)) })
		case "rules":
			d.list(field+".rules", v, func(f string, n *yaml.Node) { b.Rules = append(b.Rules, d.str(f, n)) })
		case "header":
			h := &policyv1.HeaderPlacement{}
			d.mapping(field+".header", v, "name, template", func(key string, v *yaml.Node) bool {
				switch key {
				case "name":
					h.Name = d.str(field+".header.name", v)
				case "template":
					h.Template = d.str(field+".header.template", v)
				default:
					return false
				}
				return true
			})
			b.Placement = &policyv1.SecretBinding_Header{Header: h}
		case "basic":
			f := field + ".basic"
			d.lines[f] = v.Line
			var on bool
			if v.Tag != "!!bool" || v.Decode(&on) != nil || !on {
				d.fail(f, v, "must be true (or leave it out)")
			}
			b.Placement = &policyv1.SecretBinding_Basic{Basic: &policyv1.BasicPlacement{}}
		case "query":
			b.Placement = &policyv1.SecretBinding_Query{Query: d.str(field+".query", v)}
		default:
			return false
		}
		return true
	})
	return b
}

// rate reads a rule's rate: { per_second: 5, burst: 10 }.
func (d *fileDecoder) rate(field string, n *yaml.Node) *policyv1.RuleRate {
	r := &policyv1.RuleRate{}
	d.mapping(field, n, "per_second, burst", func(key string, v *yaml.Node) bool {
		switch key {
		case "per_second":
			r.PerSecond = uint32(d.uint(field+".per_second", v, math.MaxUint32))
		case "burst":
			r.Burst = uint32(d.uint(field+".burst", v, math.MaxUint32))
		default:
			return false
		}
		return true
	})
	return r
}

func (d *fileDecoder) limits(field string, n *yaml.Node) *policyv1.PolicyLimits {
	l := &policyv1.PolicyLimits{}
	d.mapping(field, n, "max_requests, max_request_bytes, max_total_request_bytes, max_total_response_bytes, max_concurrent_connections", func(key string, v *yaml.Node) bool {
		switch key {
		case "max_requests":
			l.MaxRequests = uint32(d.uint(field+".max_requests", v, math.MaxUint32))
		case "max_request_bytes":
			l.MaxRequestBytes = d.byteSize(field+".max_request_bytes", v)
		case "max_total_request_bytes":
			l.MaxTotalRequestBytes = d.byteSize(field+".max_total_request_bytes", v)
		case "max_total_response_bytes":
			l.MaxTotalResponseBytes = d.byteSize(field+".max_total_response_bytes", v)
		case "max_concurrent_connections":
			l.MaxConcurrentConnections = uint32(d.uint(field+".max_concurrent_connections", v, math.MaxUint32))
		default:
			return false
		}
		return true
	})
	// No limits and zero limits mean the same; nil keeps a file's round
	// trip through Marshal exact.
	if proto.Equal(l, &policyv1.PolicyLimits{}) {
		return nil
	}
	return l
}

// byteSize reads a byte count: a whole number, or a string with a unit
// (ParseByteSize).
func (d *fileDecoder) byteSize(field string, v *yaml.Node) uint64 {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!str" {
		d.lines[field] = v.Line
		b, err := ParseByteSize(v.Value)
		if err != nil {
			d.fail(field, v, "%v", err)
		}
		return b
	}
	return d.uint(field, v, math.MaxUint64)
}

var byteUnits = []struct {
	suffix string
	size   uint64
}{
	{"GiB", 1 << 30},
	{"MiB", 1 << 20},
	{"KiB", 1 << 10},
	{"B", 1},
}

// ParseByteSize reads a byte count: digits, optionally followed by B, KiB,
// MiB or GiB ("1MiB", "512 KiB"). Decimal units (MB) are refused rather than
// guessed at.
func ParseByteSize(s string) (uint64, error) {
	digits := strings.TrimLeft(s, "0123456789")
	num := s[:len(s)-len(digits)]
	unit := strings.TrimSpace(digits)
	if num == "" {
		return 0, fmt.Errorf("byte size %q does not start with a whole number", s)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("byte size %q is too large", s)
	}
	mult := uint64(0)
	if unit == "" {
		mult = 1
	}
	for _, u := range byteUnits {
		if unit == u.suffix {
			mult = u.size
		}
	}
	if mult == 0 {
		return 0, fmt.Errorf("byte size %q: unit %q is not B, KiB, MiB or GiB", s, unit)
	}
	if n > math.MaxUint64/mult {
		return 0, fmt.Errorf("byte size %q is too large", s)
	}
	return n * mult, nil
}

// FormatByteSize writes n with the largest binary unit that divides it.
func FormatByteSize(n uint64) string {
	for _, u := range byteUnits[:3] {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatUint(n/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatUint(n, 10)
}

// Marshal writes a valid policy in the file format, rules on one line each.
// It refuses a policy Validate refuses, so what it writes always parses.
func Marshal(p *policyv1.Policy) ([]byte, error) {
	if err := Validate(p); err != nil {
		return nil, fmt.Errorf("marshal policy: %w", err)
	}
	root := &yaml.Node{Kind: yaml.MappingNode}
	put(root, "version", scalar(strconv.Itoa(FileVersion)))
	switch p.GetMode() {
	case policyv1.Mode_MODE_ENFORCE:
		put(root, "mode", str("enforce"))
	case policyv1.Mode_MODE_AUDIT:
		put(root, "mode", str("audit"))
	}
	if a := actionName(p.GetDefaultAction()); a != "" {
		put(root, "default", str(a))
	}
	if len(p.GetHosts()) > 0 {
		hosts := &yaml.Node{Kind: yaml.SequenceNode}
		for _, h := range p.GetHosts() {
			hosts.Content = append(hosts.Content, marshalHost(h))
		}
		put(root, "hosts", hosts)
	}
	if l := p.GetLimits(); l != nil && !proto.Equal(l, &policyv1.PolicyLimits{}) {
		limits := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
		putUint(limits, "max_requests", uint64(l.GetMaxRequests()))
		putByteSize(limits, "max_request_bytes", l.GetMaxRequestBytes())
		putByteSize(limits, "max_total_request_bytes", l.GetMaxTotalRequestBytes())
		putByteSize(limits, "max_total_response_bytes", l.GetMaxTotalResponseBytes())
		putUint(limits, "max_concurrent_connections", uint64(l.GetMaxConcurrentConnections()))
		put(root, "limits", limits)
	}
	if len(p.GetSecrets()) > 0 {
		secrets := &yaml.Node{Kind: yaml.SequenceNode}
		for _, b := range p.GetSecrets() {
			secrets.Content = append(secrets.Content, marshalSecret(b))
		}
		put(root, "secrets", secrets)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return nil, fmt.Errorf("marshal policy: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("marshal policy: %w", err)
	}
	return buf.Bytes(), nil
}

func marshalHost(h *policyv1.HostPolicy) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode}
	put(n, "host", str(h.GetHost()))
	if len(h.GetRules()) > 0 {
		rules := &yaml.Node{Kind: yaml.SequenceNode}
		for _, r := range h.GetRules() {
			rules.Content = append(rules.Content, marshalRule(r))
		}
		put(n, "rules", rules)
	}
	if a := actionName(h.GetDefaultAction()); a != "" {
		put(n, "default", str(a))
	}
	if len(h.GetSchemes()) > 0 {
		ss := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, sc := range h.GetSchemes() {
			ss.Content = append(ss.Content, str(sc))
		}
		put(n, "schemes", ss)
	}
	if len(h.GetPorts()) > 0 {
		ps := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, p := range h.GetPorts() {
			ps.Content = append(ps.Content, scalar(strconv.FormatUint(uint64(p), 10)))
		}
		put(n, "ports", ps)
	}
	if h.GetPassthrough() {
		put(n, "passthrough", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: "true"})
	}
	return n
}

func marshalRule(r *policyv1.Rule) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
	if r.GetId() != "" {
		put(n, "id", str(r.GetId()))
	}
	if len(r.GetMethods()) > 0 {
		ms := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, m := range r.GetMethods() {
			ms.Content = append(ms.Content, str(m))
		}
		put(n, "methods", ms)
	}
	if r.GetPath() != "" {
		put(n, "path", str(r.GetPath()))
	}
	put(n, "action", str(actionName(r.GetAction())))
	if r.GetReason() != "" {
		put(n, "reason", str(r.GetReason()))
	}
	if r.GetWebsocket() {
		put(n, "websocket", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: "true"})
	}
	if rt := r.GetRate(); rt != nil {
		rate := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
		putUint(rate, "per_second", uint64(rt.GetPerSecond()))
		putUint(rate, "burst", uint64(rt.GetBurst()))
		put(n, "rate", rate)
	}
	return n
}

func marshalSecret(b *policyv1.SecretBinding) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode}
	put(n, "secret", str(b.GetSecret()))
	if b.GetPlaceholderPrefix() != "" {
		put(n, "placeholder", str(b.GetPlaceholderPrefix()))
	}
	put(n, "hosts", flowList(b.GetHosts()))
	if len(b.GetRules()) > 0 {
		put(n, "rules", flowList(b.GetRules()))
	}
	switch pl := b.GetPlacement().(type) {
	case *policyv1.SecretBinding_Header:
		h := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
		put(h, "name", str(pl.Header.GetName()))
		if pl.Header.GetTemplate() != "" {
			put(h, "template", str(pl.Header.GetTemplate()))
		}
		put(n, "header", h)
	case *policyv1.SecretBinding_Basic:
		put(n, "basic", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: "true"})
	case *policyv1.SecretBinding_Query:
		put(n, "query", str(pl.Query))
	}
	return n
}

// flowList is a list of strings on one line.
func flowList(items []string) *yaml.Node {
	l := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
	for _, s := range items {
		l.Content = append(l.Content, str(s))
	}
	return l
}

// putUint puts a number unless it is 0, which the file leaves out.
func putUint(m *yaml.Node, key string, v uint64) {
	if v != 0 {
		put(m, key, scalar(strconv.FormatUint(v, 10)))
	}
}

// putByteSize puts a byte count with its unit (FormatByteSize) unless it
// is 0.
func putByteSize(m *yaml.Node, key string, v uint64) {
	if v == 0 {
		return
	}
	b := FormatByteSize(v)
	if _, err := strconv.ParseUint(b, 10, 64); err == nil {
		put(m, key, scalar(b))
	} else {
		put(m, key, str(b))
	}
}

func actionName(a policyv1.Action) string {
	switch a {
	case policyv1.Action_ACTION_ALLOW:
		return "allow"
	case policyv1.Action_ACTION_DENY:
		return "deny"
	}
	return ""
}

func put(m *yaml.Node, key string, v *yaml.Node) {
	m.Content = append(m.Content, str(key), v)
}

// str is a string scalar; the encoder quotes it where a plain scalar would
// read as something else (a number, a bool, an alias).
func str(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

func scalar(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: s} }
