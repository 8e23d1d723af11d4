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
