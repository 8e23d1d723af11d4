package policy

import (
	"errors"
	"fmt"
	"strings"
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
// the normal form Decide compares against (see normalizePath), so that a
// pattern can never name a path no request could have.
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
			if err := checkSegment(part, last); err != nil {
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

// match takes a path normalizePath accepted. A prefix pattern matches the
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

// normalizePath returns the form of a request path that rules are matched
// on, the one the egress proxy produces: escapes of unreserved characters
// decoded, other escapes in uppercase hex, bytes that may not appear raw in
// a path (space, non-ASCII, "{", ...) escaped. The proxy already normalizes;
// doing these unambiguous steps again means another spelling cannot slip
// past a rule. What only a normalizer could settle, and different servers
// settle differently, is refused: dot segments (also "..;"), empty segments,
// encoded slashes and backslashes, invalid escapes, a query or fragment,
// control bytes.
func normalizePath(path string) (string, error) {
	if path == "" || path[0] != '/' {
		return "", errors.New(`does not start with "/"`)
	}
	rewrite := false
	for i := 0; i < len(path); i++ {
		switch c := path[i]; {
		case c == '/' || isPathChar(c):
		case c == '%':
			b, upper, err := decodeEscape(path, i)
			if err != nil {
				return "", err
			}
			rewrite = rewrite || !upper || isUnreserved(b)
			i += 2
		default:
			if err := checkPathByte(c); err != nil {
				return "", err
			}
			rewrite = true
		}
	}
	if rewrite {
		var sb strings.Builder
		sb.Grow(len(path) + 8)
		for i := 0; i < len(path); i++ {
			c := path[i]
			switch {
			case c == '/' || isPathChar(c):
				sb.WriteByte(c)
			case c == '%':
				b, _, _ := decodeEscape(path, i)
				if isUnreserved(b) {
					sb.WriteByte(b)
				} else {
					writeEscaped(&sb, b)
				}
				i += 2
			default:
				writeEscaped(&sb, c)
			}
		}
		path = sb.String()
	}
	rest := path[1:]
	for {
		i := strings.IndexByte(rest, '/')
		if i < 0 {
			if err := checkSegmentShape(rest, true); err != nil {
				return "", err
			}
			return path, nil
		}
		if err := checkSegmentShape(rest[:i], false); err != nil {
			return "", err
		}
		rest = rest[i+1:]
	}
}

// checkSegment checks one literal segment of a pattern, which must be in
// the normal form normalizePath produces: a pattern that is not could never
// match, and a deny rule that never matches fails open.
func checkSegment(seg string, last bool) error {
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case isPathChar(c):
		case c == '%':
			b, upper, err := decodeEscape(seg, i)
			if err != nil {
				return err
			}
			if !upper {
				return fmt.Errorf("segment %q: write escapes with uppercase hex (%%%02X)", seg, b)
			}
			if isUnreserved(b) {
				return fmt.Errorf("segment %q: write %q instead of its escape: requests are matched unescaped", seg, b)
			}
			i += 2
		default:
			if err := checkPathByte(c); err != nil {
				return err
			}
			return fmt.Errorf("segment %q: write %q as %%%02X: requests are matched with it escaped", seg, c, c)
		}
	}
	return checkSegmentShape(seg, last)
}

// checkSegmentShape refuses dot segments, including the "..;" form some
// servers read as "..", and empty segments except the last (a trailing
// slash).
func checkSegmentShape(seg string, last bool) error {
	switch {
	case seg == "":
		if !last {
			return errors.New(`has an empty segment ("//")`)
		}
	case seg == "." || seg == "..":
		return fmt.Errorf("has a %q segment", seg)
	case strings.HasPrefix(seg, ".;") || strings.HasPrefix(seg, "..;"):
		return fmt.Errorf("has a dot segment with parameters (%q)", seg)
	}
	return nil
}

// checkPathByte refuses the bytes that make a path ambiguous rather than
// merely in need of escaping.
func checkPathByte(c byte) error {
	switch {
	case c == '\\':
		return errors.New("has a backslash")
	case c == '?' || c == '#':
		return fmt.Errorf("has %q: the query and fragment are not part of the path", c)
	case c < ' ' || c == 0x7f:
		return fmt.Errorf("has control byte %#02x", c)
	}
	return nil
}

// isPathChar reports whether c may appear unescaped in a normalized path
// segment: RFC 3986 pchar without "%".
func isPathChar(c byte) bool {
	return isUnreserved(c) || strings.IndexByte("!$&'()*+,;=:@", c) >= 0
}

func writeEscaped(b *strings.Builder, c byte) {
	const hex = "0123456789ABCDEF"
	b.WriteByte('%')
	b.WriteByte(hex[c>>4])
	b.WriteByte(hex[c&15])
}

// decodeEscape decodes the escape at s[i] == '%' and reports whether its
// hex digits were uppercase.
func decodeEscape(s string, i int) (b byte, upper bool, err error) {
	if i+2 >= len(s) {
		return 0, false, errors.New("has an incomplete %-escape")
	}
	hi, okHi := unhex(s[i+1])
	lo, okLo := unhex(s[i+2])
	if !okHi || !okLo {
		return 0, false, fmt.Errorf("has an invalid %%-escape %q", s[i:i+3])
	}
	b = hi<<4 | lo
	switch b {
	case '/':
		return 0, false, errors.New("has an encoded slash (%2F)")
	case '\\':
		return 0, false, errors.New("has an encoded backslash (%5C)")
	}
	upper = !isLowerHex(s[i+1]) && !isLowerHex(s[i+2])
	return b, upper, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func isLowerHex(c byte) bool { return 'a' <= c && c <= 'f' }

// isUnreserved is RFC 3986's unreserved set, whose escapes mean the same as
// the characters themselves.
func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
