// Package redact replaces secrets in queries and URLs with fingerprints
// before anything is logged or sent to the decider. Request headers need
// none: they are neither logged nor sent.
package redact

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"slices"
	"strings"
)

// DefaultQueryParams are redacted by name (case-insensitive).
var DefaultQueryParams = []string{
	"api_key", "apikey", "api-key", "key", "token", "access_token", "refresh_token",
	"id_token", "client_secret", "secret", "password", "passwd", "pwd", "auth",
	"sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
	"code", "session", "sessionid",
}

// DefaultSubstrings redact any query parameter whose lowercase name
// contains one of them: names that look like keys are redacted even when
// the list does not name them.
var DefaultSubstrings = []string{"token", "secret", "passw", "api_key", "apikey", "api-key", "signature", "credential", "-key", "_key"}

// Redactor holds the names it redacts.
type Redactor struct {
	params     map[string]bool
	substrings []string
}

// New returns a Redactor for the default names plus the extra query
// parameter names given.
func New(extraParams []string) *Redactor {
	r := &Redactor{params: map[string]bool{}, substrings: DefaultSubstrings}
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
