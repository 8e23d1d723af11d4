package canon

import (
	"errors"
	"fmt"
	"strings"
)

// ErrAmbiguousPath is wrapped by every error CanonicalTarget returns, and
// by those of CheckPath and CheckSegment for the same reasons: the path
// could mean different things to different servers, so it is blocked
// rather than guessed at.
var ErrAmbiguousPath = errors.New("ambiguous path")

// CanonicalTarget normalizes an origin-form request target (path and
// optional query) and returns them separately.
//
// The path is percent-decoded where the escape stands for an unreserved
// character (ALPHA, DIGIT, "-", ".", "_", "~"), other escapes are kept with
// upper-case hex, bytes that may not appear raw in a path are
// percent-encoded, repeated slashes are collapsed and dot segments are
// resolved (RFC 3986 5.2.4). It is an error, not a guess, when the path has
// an encoded slash or backslash (%2F, %5C), a raw backslash, an encoded NUL,
// an invalid escape, a control byte, a fragment, a dot segment spelled with
// an encoded dot (%2E%2E), or a "..;" segment some servers read as "..".
//
// The query is returned as sent, without the "?", after checking that its
// escapes are valid and it holds no control bytes or fragment.
func CanonicalTarget(target string) (path, query string, err error) {
	rawPath, rawQuery, _ := strings.Cut(target, "?")
	if strings.ContainsRune(target, '#') {
		return "", "", fmt.Errorf("%w: fragment in request target", ErrAmbiguousPath)
	}
	if !strings.HasPrefix(rawPath, "/") {
		// The target is not quoted: errors are written down, and it may
		// hold a key.
		return "", "", fmt.Errorf("%w: target is not origin-form", ErrAmbiguousPath)
	}
	if err := checkQuery(rawQuery); err != nil {
		return "", "", err
	}
	segs := strings.Split(rawPath[1:], "/")
	out := make([]string, 0, len(segs))
	for i, raw := range segs {
		last := i == len(segs)-1
		seg, encodedDot, err := normalizeSegment(raw)
		if err != nil {
			return "", "", err
		}
		switch {
		case seg == "" && !last:
			// Repeated slash: collapsed.
			continue
		case seg == "." || seg == "..":
			if encodedDot {
				return "", "", fmt.Errorf("%w: dot segment spelled with an encoded dot", ErrAmbiguousPath)
			}
			if seg == ".." && len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				// "/a/b/.." is "/a/": the directory keeps its slash.
				out = append(out, "")
			}
			continue
		case isDotWithParams(seg):
			return "", "", fmt.Errorf("%w: dot segment with path parameters", ErrAmbiguousPath)
		}
		out = append(out, seg)
	}
	return "/" + strings.Join(out, "/"), rawQuery, nil
}

func normalizeSegment(raw string) (seg string, encodedDot bool, err error) {
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '%':
			d, _, err := decodeEscape(raw, i)
			if err != nil {
				return "", false, err
			}
			i += 2
			switch {
			case d == '.':
				encodedDot = true
				b.WriteByte('.')
			case isUnreserved(d):
				b.WriteByte(d)
			default:
				writeEscaped(&b, d)
			}
		case isPathChar(c):
			b.WriteByte(c)
		default:
			if err := checkRawByte(c); err != nil {
				return "", false, err
			}
			writeEscaped(&b, c)
		}
	}
	return b.String(), encodedDot, nil
}

// CheckPath reports whether path is canonical: a path CanonicalTarget
// returns, which it returns unchanged. Its error wraps [ErrAmbiguousPath]
// for what CanonicalTarget refuses, [ErrNotCanonical] for what it would
// rewrite, and names the first segment at fault.
func CheckPath(path string) error {
	if path == "" || path[0] != '/' {
		return fmt.Errorf("%w: does not start with \"/\"", ErrNotCanonical)
	}
	rest := path[1:]
	for {
		i := strings.IndexByte(rest, '/')
		if i < 0 {
			return CheckSegment(rest, true)
		}
		if err := CheckSegment(rest[:i], false); err != nil {
			return err
		}
		rest = rest[i+1:]
	}
}

// CheckSegment reports whether seg, one "/"-separated segment of a path, is
// as CanonicalTarget would write it; last says whether it is the path's
// last segment, which alone may be empty (a trailing slash). Policy
// patterns use it for their literal segments, so that no pattern can name
// a path no canonical request has: a deny rule that never matches fails
// open.
func CheckSegment(seg string, last bool) error {
	switch {
	case seg == "":
		if !last {
			return fmt.Errorf("%w: empty segment (\"//\")", ErrNotCanonical)
		}
		return nil
	case seg == "." || seg == "..":
		return fmt.Errorf("%w: %q segment", ErrNotCanonical, seg)
	case isDotWithParams(seg):
		return fmt.Errorf("%w: dot segment with path parameters (%q)", ErrAmbiguousPath, seg)
	}
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case isPathChar(c):
		case c == '%':
			d, upper, err := decodeEscape(seg, i)
			if err != nil {
				return err
			}
			if isUnreserved(d) {
				return fmt.Errorf("%w: segment %q: write %q instead of its escape %s", ErrNotCanonical, seg, d, seg[i:i+3])
			}
			if !upper {
				return fmt.Errorf("%w: segment %q: write escapes with uppercase hex (%%%02X)", ErrNotCanonical, seg, d)
			}
			i += 2
		case c == '?':
			return fmt.Errorf("%w: segment %q: \"?\" starts the query, which is not part of the path", ErrNotCanonical, seg)
		default:
			if err := checkRawByte(c); err != nil {
				return err
			}
			return fmt.Errorf("%w: segment %q: write %q as %%%02X", ErrNotCanonical, seg, c, c)
		}
	}
	return nil
}

// isDotWithParams reports whether seg is a dot segment with parameters,
// which some servers (Tomcat, Jetty) read as the dot segment itself.
func isDotWithParams(seg string) bool {
	return strings.HasPrefix(seg, "..;") || strings.HasPrefix(seg, ".;")
}

// decodeEscape decodes the escape at s[i] == '%', refuses those that make a
// path ambiguous, and reports whether its hex digits were uppercase.
func decodeEscape(s string, i int) (d byte, upper bool, err error) {
	if i+2 >= len(s) || !isHexByte(s[i+1]) || !isHexByte(s[i+2]) {
		return 0, false, fmt.Errorf("%w: invalid percent escape", ErrAmbiguousPath)
	}
	d = unhex(s[i+1])<<4 | unhex(s[i+2])
	switch d {
	case '/':
		return 0, false, fmt.Errorf("%w: encoded slash (%%2F)", ErrAmbiguousPath)
	case '\\':
		return 0, false, fmt.Errorf("%w: encoded backslash (%%5C)", ErrAmbiguousPath)
	case 0:
		return 0, false, fmt.Errorf("%w: encoded NUL", ErrAmbiguousPath)
	}
	upper = !isLowerHex(s[i+1]) && !isLowerHex(s[i+2])
	return d, upper, nil
}

// checkRawByte refuses the raw bytes that make a path ambiguous rather
// than merely in need of escaping.
func checkRawByte(c byte) error {
	switch {
	case c == '\\':
		return fmt.Errorf("%w: backslash", ErrAmbiguousPath)
	case c == '#':
		return fmt.Errorf("%w: fragment", ErrAmbiguousPath)
	case c < 0x20 || c == 0x7f:
		return fmt.Errorf("%w: control byte %#x", ErrAmbiguousPath, c)
	}
	return nil
}

func checkQuery(q string) error {
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '%':
			if i+2 >= len(q) || !isHexByte(q[i+1]) || !isHexByte(q[i+2]) {
				return fmt.Errorf("%w: invalid percent escape in query", ErrAmbiguousPath)
			}
			i += 2
		case c <= 0x20 || c >= 0x7f:
			return fmt.Errorf("%w: byte %#x in query", ErrAmbiguousPath, c)
		}
	}
	return nil
}

// isUnreserved is RFC 3986's unreserved set, whose escapes mean the same as
// the characters themselves.
func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// isPathChar reports whether c may appear raw in a path segment (RFC 3986
// pchar minus "%", which is handled as an escape).
func isPathChar(c byte) bool {
	if isUnreserved(c) {
		return true
	}
	return strings.IndexByte("!$&'()*+,;=:@", c) >= 0
}

func isHexByte(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isLowerHex(c byte) bool { return 'a' <= c && c <= 'f' }

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

func writeEscaped(b *strings.Builder, c byte) {
	const hex = "0123456789ABCDEF"
	b.WriteByte('%')
	b.WriteByte(hex[c>>4])
	b.WriteByte(hex[c&15])
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
