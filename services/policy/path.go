package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sandpit-run/sandpit/services/policy/canon"
)

const maxPathPatternLen = 1024

// pathPattern is a compiled rule path. Paths and patterns are split on "/"
// after the leading slash, so "/" is one empty segment and a trailing slash
// adds an empty last segment: "/v1/products/" is {"v1", "products", ""}.
type pathPattern struct {
	any      bool      // the rule has no path: every path matches
	segments []segment // without the trailing "**"
	prefix   bool      // the pattern ended in "/**"
}

type segment struct {
	star    bool // "*": exactly one non-empty segment
	literal string
}

// parsePathPattern checks a rule's path. Literal segments must already be in
// the canonical form the proxy sends and Decide requires (see
// [canon.CheckSegment]), so that a pattern can never name a path no request
// could have.
func parsePathPattern(s string) (pathPattern, error) {
	if s == "" {
		return pathPattern{any: true}, nil
	}
	if len(s) > maxPathPatternLen {
		return pathPattern{}, fmt.Errorf("longer than %d bytes", maxPathPatternLen)
	}
	if s[0] != '/' {
		return pathPattern{}, errors.New(`must start with "/"`)
	}
	if s == "/**" {
		return pathPattern{prefix: true}, nil
	}
	var p pathPattern
	parts := strings.Split(s[1:], "/")
	for i, part := range parts {
		last := i == len(parts)-1
		switch {
		case part == "**":
			if !last {
				return pathPattern{}, errors.New(`"**" is only allowed as the last segment ("/prefix/**")`)
			}
			p.prefix = true
		case part == "*":
			p.segments = append(p.segments, segment{star: true})
		case strings.Contains(part, "*"):
			return pathPattern{}, fmt.Errorf(`segment %q: "*" and "**" must be whole segments`, part)
		default:
			if err := canon.CheckSegment(part, last); err != nil {
				return pathPattern{}, err
			}
			p.segments = append(p.segments, segment{literal: part})
		}
	}
	return p, nil
}

func (p pathPattern) String() string {
	if p.any {
		return ""
	}
	var b strings.Builder
	for _, s := range p.segments {
		b.WriteByte('/')
		if s.star {
			b.WriteByte('*')
		} else {
			b.WriteString(s.literal)
		}
	}
	if p.prefix {
		b.WriteString("/**")
	}
	return b.String()
}

// matchesEvery reports whether p matches every path: no path, or "/**".
func (p pathPattern) matchesEvery() bool { return p.any || p.prefix && len(p.segments) == 0 }

// match takes a path canon.CheckPath accepted. A prefix pattern matches the
// prefix itself ("/v1/products" for "/v1/products/**") and anything under
// it, including the prefix with a trailing slash.
func (p pathPattern) match(path string) bool {
	if p.any {
		return true
	}
	rest := path[1:]
	more := true // whether rest still holds a segment ("" after "/" is one)
	for _, s := range p.segments {
		if !more {
			return false
		}
		var seg string
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			seg, rest = rest[:i], rest[i+1:]
		} else {
			seg, rest, more = rest, "", false
		}
		if s.star {
			if seg == "" {
				return false
			}
		} else if seg != s.literal {
			return false
		}
	}
	return p.prefix || !more
}

// loosen returns the pattern a deny rule also matches loosePath's form of a
// request with: literals in lowercase without trailing blanks, and no
// trailing slash.
func (p pathPattern) loosen() pathPattern {
	if p.any {
		return p
	}
	l := pathPattern{prefix: p.prefix, segments: make([]segment, len(p.segments))}
	for i, s := range p.segments {
		if !s.star {
			s.literal = trimBlanks(strings.ToLower(s.literal))
		}
		l.segments[i] = s
	}
	if n := len(l.segments); n > 1 && !l.prefix && l.segments[n-1] == (segment{}) {
		l.segments = l.segments[:n-1]
	}
	return l
}

// loosePath is a canonical path as servers commonly route it: ASCII letters
// in lowercase (case-insensitive routers: ASP.NET, Spring with
// setCaseSensitive(false), Express without caseSensitive), each segment
// without trailing %20 or %09 (trimmed by some servers and proxies), and
// without trailing slashes (Express, Flask, Rails and Spring's default
// trailing-slash match route /a/ to /a).
func loosePath(path string) string {
	segs := strings.Split(strings.ToLower(path[1:]), "/")
	for i, s := range segs {
		segs[i] = trimBlanks(s)
	}
	out := "/" + strings.Join(segs, "/")
	for len(out) > 1 && out[len(out)-1] == '/' {
		out = out[:len(out)-1]
	}
	return out
}

// trimBlanks removes escaped spaces and tabs at the end of a lowercased
// segment.
func trimBlanks(s string) string {
	for {
		t := strings.TrimSuffix(strings.TrimSuffix(s, "%20"), "%09")
		if t == s {
			return s
		}
		s = t
	}
}
