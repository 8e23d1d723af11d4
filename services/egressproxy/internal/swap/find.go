package swap

import (
	"encoding/base64"
	"errors"
	"iter"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
)

const (
	// Marker starts every placeholder id: "SPX" and 29 [A-Za-z0-9], IDLen
	// bytes in all.
	Marker = "SPX"
	// IDLen is the length of a placeholder id, Marker included.
	IDLen = 32
	// MaxFound bounds the distinct placeholders one request may carry;
	// more is ErrTooMany (the proxy makes it a violation).
	MaxFound = 16
	// MaxValue is the length Found.Value is cut to.
	MaxValue = 512

	// maxHeaderName and maxQueryKey are the lengths Found.Name is cut to
	// (FoundPlaceholder.name's bounds).
	maxHeaderName = 128
	maxQueryKey   = 64
)

// ErrTooMany is Find's error for a request with more than MaxFound
// distinct placeholders.
var ErrTooMany = errors.New("more than 16 placeholders in one request")

// Found is one placeholder id found in a request.
type Found struct {
	// ID is the marker and the 29 letters and digits after it.
	ID string
	// Place is where it was found.
	Place egressv1.PlaceholderPlace
	// Name is the canonical header name or the decoded query key (cut to
	// 128 and 64 bytes); empty for BASIC and PATH.
	Name string
	// Value is the whole header value, the decoded Basic credentials or
	// the decoded query value, cut to MaxValue. The first one found for
	// (ID, Place, Name) stands for the others. Name and Value are made
	// valid UTF-8 (an invalid byte becomes U+FFFD) for the proto.
	Value string
}

const (
	placeHeader = egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_HEADER
	placeBasic  = egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_BASIC
	placeQuery  = egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_QUERY
	placePath   = egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_PATH
)

// Find returns every placeholder id in the request, deduplicated by (ID,
// Place, Name, Value): each value holding a placeholder is reported, since
// Apply swaps into all of them and each must be what its binding places.
// The order is stable: headers by name, then the query, then
// the path. It runs in time linear in its input.
func Find(h http.Header, path, rawQuery string) ([]Found, error) {
	f := finder{seen: map[Found]bool{}}
	names := make([]string, 0, len(h))
	for name := range h {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		canon := http.CanonicalHeaderKey(name)
		f.scan(name, placePath, "", "")
		for _, v := range h[name] {
			f.scan(v, placeHeader, cut(canon, maxHeaderName), v)
			if isAuthorization(canon) {
				if creds, ok := basicCredentials(v); ok {
					f.scan(creds, placeBasic, "", creds)
				}
			}
		}
	}
	for _, param := range strings.Split(rawQuery, "&") {
		k, v, _ := strings.Cut(param, "=")
		key := queryUnescape(k)
		f.scan(key, placePath, "", "")
		val := queryUnescape(v)
		f.scan(val, placeQuery, cut(key, maxQueryKey), val)
	}
	f.scan(path, placePath, "", "")
	if p, err := url.PathUnescape(path); err == nil && p != path {
		f.scan(p, placePath, "", "")
	}
	if f.tooMany {
		return nil, ErrTooMany
	}
	return f.found, nil
}

// finder collects what Find finds.
type finder struct {
	found   []Found
	seen    map[Found]bool // keyed by the whole Found, Value cut
	tooMany bool
}

// scan records every id in s as found at place under name, with value
// (cut) as the Found's Value.
func (f *finder) scan(s string, place egressv1.PlaceholderPlace, name, value string) {
	cutValue := ""
	for id := range ids(s) {
		if f.tooMany {
			return
		}
		if cutValue == "" {
			cutValue = cut(value, MaxValue) // once: cutting reads all of value
		}
		key := Found{ID: id, Place: place, Name: name, Value: cutValue}
		if f.seen[key] {
			continue
		}
		if len(f.found) == MaxFound {
			f.tooMany = true
			return
		}
		f.seen[key] = true
		f.found = append(f.found, key)
	}
}

// ids yields every id in s, overlapping ones included, in one pass: end
// is where the run of letters and digits containing i stops.
func ids(s string) iter.Seq[string] {
	return func(yield func(string) bool) {
		end := 0
		for i := 0; i+IDLen <= len(s); i++ {
			if end <= i {
				end = i
				for end < len(s) && isIDByte(s[end]) {
					end++
				}
				if end == i {
					continue
				}
			}
			if end-i >= IDLen && strings.HasPrefix(s[i:], Marker) && !yield(s[i:i+IDLen]) {
				return
			}
		}
	}
}

func isIDByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// isAuthorization reports whether a canonical header name carries
// credentials that may be Basic.
func isAuthorization(canon string) bool {
	return canon == "Authorization" || canon == "Proxy-Authorization"
}

// basicCredentials decodes "Basic <base64>" (scheme case-insensitive) the
// way net/http's Request.BasicAuth does.
func basicCredentials(v string) (string, bool) {
	const prefix = "Basic "
	if len(v) < len(prefix) || !strings.EqualFold(v[:len(prefix)], prefix) {
		return "", false
	}
	b, err := base64.StdEncoding.DecodeString(v[len(prefix):])
	if err != nil {
		return "", false
	}
	return string(b), true
}

// queryUnescape decodes a query key or value, or returns it raw when it
// does not decode.
func queryUnescape(s string) string {
	if d, err := url.QueryUnescape(s); err == nil {
		return d
	}
	return s
}

// cut makes s valid UTF-8 (a proto string must be; an invalid byte becomes
// U+FFFD, which equals no binding) and cuts it to at most n bytes on a rune
// boundary.
func cut(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
