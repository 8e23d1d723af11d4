package swap

import (
	"cmp"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Swap replaces a placeholder by a value.
type Swap struct {
	// Placeholder is the full placeholder: prefix, marker and random part.
	Placeholder string
	// Value is the secret's value. Never logged.
	Value []byte
}

// Apply replaces every occurrence of each swap's Placeholder in h's values
// by its Value (inside Basic credentials: decoded, replaced, re-encoded
// with standard base64; the base64 text itself is not searched) and in
// rawQuery's parameter values (decoded, replaced, re-encoded with
// url.QueryEscape; an undecodable value gets the escaped Value in its raw
// bytes; parameters without a placeholder keep their exact bytes), and
// returns the new raw query. It never touches the path or header names.
// It fails, leaving h and the query unusable, when a Value with bytes a
// header value may not hold (CR, LF, NUL, other controls but HTAB) would
// be placed in a header.
func Apply(h http.Header, rawQuery string, swaps []Swap) (string, error) {
	swaps = nonEmpty(swaps, func(s Swap) string { return s.Placeholder })
	if len(swaps) == 0 {
		return rawQuery, nil
	}
	plain := replacer(swaps, func(s Swap) (string, string) { return s.Placeholder, string(s.Value) })
	for name, vals := range h {
		basic := isAuthorization(http.CanonicalHeaderKey(name))
		for i, v := range vals {
			if basic {
				if creds, ok := basicCredentials(v); ok {
					if c := plain.Replace(creds); c != creds {
						vals[i] = v[:len("Basic ")] + base64.StdEncoding.EncodeToString([]byte(c))
					}
					continue
				}
			}
			for _, s := range swaps {
				if !validHeaderValue(s.Value) && strings.Contains(v, s.Placeholder) {
					return "", fmt.Errorf("swap into header %s: the value holds a byte a header may not", name)
				}
			}
			vals[i] = plain.Replace(v)
		}
	}
	if !strings.Contains(rawQuery, "=") {
		return rawQuery, nil
	}
	var escaped *strings.Replacer // for undecodable values, made when needed
	params := strings.Split(rawQuery, "&")
	for i, param := range params {
		k, v, ok := strings.Cut(param, "=")
		if !ok {
			continue
		}
		d, err := url.QueryUnescape(v)
		if err != nil {
			if escaped == nil {
				escaped = replacer(swaps, func(s Swap) (string, string) { return s.Placeholder, url.QueryEscape(string(s.Value)) })
			}
			params[i] = k + "=" + escaped.Replace(v)
			continue
		}
		if r := plain.Replace(d); r != d {
			params[i] = k + "=" + url.QueryEscape(r)
		}
	}
	return strings.Join(params, "&"), nil
}

// ScrubHeader replaces every occurrence of each swap's Value by its
// Placeholder in every value of h (a response's headers): leftmost match
// first, the longest value on a tie.
func ScrubHeader(h http.Header, swaps []Swap) {
	swaps = nonEmpty(swaps, func(s Swap) string { return string(s.Value) })
	if len(swaps) == 0 {
		return
	}
	r := replacer(swaps, func(s Swap) (string, string) { return string(s.Value), s.Placeholder })
	for _, vals := range h {
		for i, v := range vals {
			vals[i] = r.Replace(v)
		}
	}
}

// nonEmpty returns the swaps whose key is not empty: an empty string
// matches everywhere and is never meant.
func nonEmpty(swaps []Swap, key func(Swap) string) []Swap {
	return slices.DeleteFunc(slices.Clone(swaps), func(s Swap) bool { return key(s) == "" })
}

// replacer replaces each swap's old string by its new one in one pass,
// leftmost first and longest on a tie (strings.Replacer prefers the
// earlier pair at one position, so the longest go first).
func replacer(swaps []Swap, pair func(Swap) (oldnew, with string)) *strings.Replacer {
	swaps = slices.Clone(swaps)
	slices.SortStableFunc(swaps, func(a, b Swap) int {
		oa, _ := pair(a)
		ob, _ := pair(b)
		return cmp.Compare(len(ob), len(oa))
	})
	args := make([]string, 0, 2*len(swaps))
	for _, s := range swaps {
		o, n := pair(s)
		args = append(args, o, n)
	}
	return strings.NewReplacer(args...)
}

// validHeaderValue reports whether b may be placed in a header value: no
// control byte but HTAB (net/http's httpguts.ValidHeaderFieldValue).
func validHeaderValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
