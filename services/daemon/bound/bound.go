// Package bound cuts text to a byte bound, as both binaries do to every
// field they send or keep of what a sandbox made: the proxy to its
// questions, the executor to its network log.
package bound

import (
	"strings"
	"unicode/utf8"
)

// Marker ends a string that was cut.
const Marker = "...[truncated]"

// String makes s valid UTF-8 (protobuf strings must be) of at most n bytes,
// cut at a character boundary and ending in Marker when it was cut (without
// the marker when n is smaller than it).
func String(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	marker := Marker
	if n < len(marker) {
		marker = ""
	}
	i := max(n-len(marker), 0)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + marker
}
