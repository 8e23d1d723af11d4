package proxy

import (
	"errors"
	"net/url"
	"strings"

	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// Reasons are written down (the proxy's log, the executor's network log
// and the Result), so none is built from the request: each is one of a
// fixed set of texts that names the problem class, never the bytes of the
// path or query that caused it (an error from a parser quotes them, and
// they may hold a key).

// targetClasses are the problems canon.CanonicalTarget reports, as fixed
// texts; its error is matched against them, never copied.
var targetClasses = []string{
	"fragment in request target",
	"is not origin-form",
	"dot segment spelled with an encoded dot",
	"dot segment with path parameters",
	"invalid percent escape in query",
	"invalid percent escape",
	"encoded slash (%2F)",
	"encoded backslash (%5C)",
	"encoded NUL",
	"backslash",
	"fragment",
	"control byte",
	"in query",
}

// targetReason is the reason a target canon refused is blocked for.
func targetReason(err error) string {
	msg := err.Error()
	prefix := "request target not canonical"
	if errors.Is(err, canon.ErrAmbiguousPath) {
		prefix = "ambiguous path"
	}
	for _, c := range targetClasses {
		if strings.Contains(msg, c) {
			switch c {
			case "is not origin-form":
				return prefix + ": not origin-form"
			case "in query":
				return prefix + ": byte not allowed in query"
			}
			return prefix + ": " + c
		}
	}
	return prefix
}

// unparsableReason is the reason a request net/http could not parse is
// blocked for. Its errors quote the target (parse "/p?api_key=S": invalid
// URL escape "%?a").
func unparsableReason(err error) string {
	var ue *url.Error
	var esc url.EscapeError
	switch {
	case errors.As(err, &esc), errors.As(err, &ue) && strings.Contains(ue.Err.Error(), "invalid URL escape"):
		return "unparsable request: invalid percent escape in the target"
	case strings.Contains(err.Error(), "invalid URL escape"):
		return "unparsable request: invalid percent escape in the target"
	case errors.As(err, &ue):
		return "unparsable request: malformed target"
	case strings.Contains(err.Error(), "malformed MIME header"):
		return "unparsable request: malformed header"
	}
	return "unparsable request"
}

// upgradeReason is the reason an Upgrade other than WebSocket is blocked
// for; only the protocols named here are named back.
func upgradeReason(up string) string {
	if strings.EqualFold(strings.TrimSpace(up), "h2c") {
		return "upgrade to h2c is not supported"
	}
	return "upgrade to a protocol other than WebSocket is not supported"
}
