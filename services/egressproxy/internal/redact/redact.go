// Package redact replaces secrets in request headers, queries and URLs with
// fingerprints before anything is logged or sent to the decider.
package redact

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// DefaultHeaders are redacted by name (case-insensitive) besides
// Authorization, Proxy-Authorization, Cookie and Set-Cookie, which always
// are.
var DefaultHeaders = []string{
	"x-api-key", "api-key", "apikey", "x-auth-token", "x-access-token",
	"x-amz-security-token", "x-goog-api-key", "private-token", "x-csrf-token",
	"x-xsrf-token", "x-vault-token", "x-session-token",
}

// DefaultQueryParams are redacted by name (case-insensitive).
var DefaultQueryParams = []string{
	"api_key", "apikey", "api-key", "key", "token", "access_token", "refresh_token",
	"id_token", "client_secret", "secret", "password", "passwd", "pwd", "auth",
	"sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
	"code", "session", "sessionid",
}

// DefaultSubstrings redact any header or query parameter whose lowercase
// name contains one of them: names that look like keys are redacted even
// when the lists do not name them, at the cost of also hiding a harmless
// Idempotency-Key.
var DefaultSubstrings = []string{"token", "secret", "passw", "api_key", "apikey", "api-key", "signature", "credential", "-key", "_key"}

// Redactor holds the names it redacts.
type Redactor struct {
	headers    map[string]bool
	params     map[string]bool
	substrings []string
}

// New returns a Redactor for the default names plus the extra header and
// query parameter names given.
func New(extraHeaders, extraParams []string) *Redactor {
	r := &Redactor{headers: map[string]bool{}, params: map[string]bool{}, substrings: DefaultSubstrings}
	for _, h := range append(slices.Clone(DefaultHeaders), extraHeaders...) {
		r.headers[strings.ToLower(strings.TrimSpace(h))] = true
	}
	for _, p := range append(slices.Clone(DefaultQueryParams), extraParams...) {
		r.params[strings.ToLower(strings.TrimSpace(p))] = true
	}
	return r
}

// Fingerprint is the marker a secret value is replaced with: the first 8
// hex digits of its SHA-256, so a user can tell which of their keys was
// sent without it being shown. Low-entropy values (short passwords) can be
// guessed from it; keys cannot.
func Fingerprint(value string) string {
	sum := sha256.Sum256([]byte(value))
	return "[redacted sha256:" + hex.EncodeToString(sum[:4]) + "]"
}

// Header is one redacted header line.
type Header struct {
	Name, Value string
}

// Headers returns the headers with lowercase names, sorted by name, each
// value redacted when its name marks it as a secret.
func (r *Redactor) Headers(h http.Header) []Header {
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	slices.Sort(names)
	var out []Header
	for _, k := range names {
		name := strings.ToLower(k)
		for _, v := range h[k] {
			out = append(out, Header{Name: name, Value: r.HeaderValue(name, v)})
		}
	}
	return out
}

// HeaderValue redacts one header value if its name marks it as a secret.
func (r *Redactor) HeaderValue(name, value string) string {
	name = strings.ToLower(name)
	switch name {
	case "authorization", "proxy-authorization":
		// Keep the scheme: "Bearer" versus "Basic" helps debugging.
		if scheme, cred, ok := strings.Cut(strings.TrimSpace(value), " "); ok && isToken(scheme) {
			return scheme + " " + Fingerprint(strings.TrimSpace(cred))
		}
		return Fingerprint(value)
	case "cookie":
		parts := strings.Split(value, ";")
		for i, p := range parts {
			parts[i] = redactPair(strings.TrimSpace(p))
		}
		return strings.Join(parts, "; ")
	case "set-cookie":
		pair, attrs, hasAttrs := strings.Cut(value, ";")
		out := redactPair(strings.TrimSpace(pair))
		if hasAttrs {
			out += ";" + attrs
		}
		return out
	}
	if r.secretName(r.headers, name) {
		return Fingerprint(value)
	}
	return value
}

func redactPair(p string) string {
	if name, v, ok := strings.Cut(p, "="); ok {
		return name + "=" + Fingerprint(v)
	}
	return Fingerprint(p)
}

func (r *Redactor) secretName(exact map[string]bool, name string) bool {
	if exact[name] {
		return true
	}
	for _, s := range r.substrings {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

// Query redacts the values of secret parameters in a raw query, keeping
// everything else byte for byte. The marker's space is written as %20 so
// the result still parses as a query.
func (r *Redactor) Query(raw string) string {
	if raw == "" {
		return ""
	}
	parts := strings.Split(raw, "&")
	for i, p := range parts {
		k, v, hasValue := strings.Cut(p, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			// A name we cannot read might be a secret's: hide the value.
			name = ""
		}
		if !hasValue {
			continue
		}
		if err != nil || r.secretName(r.params, strings.ToLower(name)) {
			val, uerr := url.QueryUnescape(v)
			if uerr != nil {
				val = v
			}
			parts[i] = k + "=" + strings.ReplaceAll(Fingerprint(val), " ", "%20")
		}
	}
	return strings.Join(parts, "&")
}

// URL renders u for logs: userinfo dropped, secret query parameters
// redacted, fragment dropped.
func (r *Redactor) URL(u *url.URL) string {
	c := *u
	c.User = nil
	c.Fragment, c.RawFragment = "", ""
	c.RawQuery = r.Query(u.RawQuery)
	return c.String()
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
