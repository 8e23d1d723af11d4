// Package redact replaces secrets in paths, queries and URLs with fingerprints
// before anything is logged or sent to the decider. Request headers need
// none: they are neither logged nor sent.
package redact

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// DefaultQueryParams are redacted by name (case-insensitive).
var DefaultQueryParams = []string{
	"api_key", "apikey", "api-key", "key", "token", "access_token", "refresh_token",
	"id_token", "client_secret", "secret", "password", "passwd", "pwd", "auth",
	"sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
	"code", "session", "sessionid", "jwt", "pass", "authorization", "bearer",
	"private_key", "credentials",
}

// DefaultSubstrings redact any query parameter whose lowercase name
// contains one of them: names that look like keys are redacted even when
// the list does not name them.
var DefaultSubstrings = []string{"token", "secret", "passw", "api_key", "apikey", "api-key", "signature", "credential", "-key", "_key", "auth", "jwt", "session"}

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
// everything else byte for byte. A parameter is secret by its name, or by
// its value (or name) looking like a key wherever it sits (see
// LooksSecret). Both "&" and ";" separate parameters: some servers read
// either. The marker's space is written as %20 so the result still parses
// as a query.
func (r *Redactor) Query(raw string) string {
	if raw == "" {
		return ""
	}
	var b strings.Builder
	for raw != "" {
		i := strings.IndexAny(raw, "&;")
		p, sep := raw, ""
		if i >= 0 {
			p, sep = raw[:i], raw[i:i+1]
			raw = raw[i+1:]
		} else {
			raw = ""
		}
		b.WriteString(r.param(p))
		b.WriteString(sep)
	}
	return b.String()
}

// param redacts one name=value pair of a query.
func (r *Redactor) param(p string) string {
	k, v, hasValue := strings.Cut(p, "=")
	name, err := url.QueryUnescape(k)
	if err != nil {
		// A name we cannot read might be a secret's: hide the value.
		name = ""
	}
	if looksSecretRaw(k, name) {
		// A key sent as a name (?sk_live_...) or without a value.
		k = queryMarker(name)
	}
	if !hasValue {
		return k
	}
	val, uerr := url.QueryUnescape(v)
	if uerr != nil {
		val = v
	}
	if err != nil || r.secretName(r.params, strings.ToLower(name)) || looksSecretRaw(v, val) {
		return k + "=" + queryMarker(val)
	}
	return k + "=" + v
}

func queryMarker(v string) string { return strings.ReplaceAll(Fingerprint(v), " ", "%20") }

// pathMarker is Fingerprint as a canonical path segment writes it.
func pathMarker(v string) string {
	return strings.NewReplacer(" ", "%20", "[", "%5B", "]", "%5D").Replace(Fingerprint(v))
}

// secretShapes are the shapes of keys that are secret whatever name they
// are sent under: payment, cloud, source-forge and chat-service keys, and
// JWTs.
var secretShapes = regexp.MustCompile(`` +
	`[sr]k_(?:live|test)_[0-9A-Za-z]{8,}` +
	`|whsec_[0-9A-Za-z]{16,}` +
	`|sk-[0-9A-Za-z_-]{20,}` +
	`|gh[pousr]_[0-9A-Za-z]{20,}` +
	`|github_pat_[0-9A-Za-z_]{20,}` +
	`|xox[abeprs]-[0-9A-Za-z-]{10,}` +
	`|(?:AKIA|ASIA)[0-9A-Z]{16}` +
	`|AIza[0-9A-Za-z_-]{30,}` +
	`|eyJ[0-9A-Za-z_-]{4,}\.eyJ[0-9A-Za-z_-]{4,}\.[0-9A-Za-z_-]*` +
	`|glpat-[0-9A-Za-z_-]{20,}`)

// LooksSecret reports whether s contains something shaped like a key.
func LooksSecret(s string) bool { return secretShapes.MatchString(s) }

// looksSecretRaw checks a value as sent and as decoded: an escape can
// hide a shape from one of the two.
func looksSecretRaw(raw, decoded string) bool {
	return LooksSecret(raw) || LooksSecret(decoded)
}

// Path redacts the segments of a normalized path that carry a secret,
// keeping the others byte for byte: a segment holding a key-shaped value
// (see LooksSecret), and the token segments of the webhook and bot URLs
// that put their credential in the path (Telegram /bot<token>/, Slack
// /services/T…/B…/<secret>, Discord /api/webhooks/<id>/<token>). A
// redacted segment becomes the fingerprint of its decoded value, escaped
// as a canonical path writes it, so the result is still a canonical path.
func (r *Redactor) Path(path string) string {
	if path == "" {
		return ""
	}
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		if seg == "" {
			continue
		}
		dec, err := url.PathUnescape(seg)
		if err != nil {
			dec = seg
		}
		switch {
		case looksSecretRaw(seg, dec):
			segs[i] = pathMarker(dec)
		case telegramToken.MatchString(dec):
			segs[i] = "bot" + pathMarker(dec[3:])
		case i >= 3 && segs[i-3] == "services" && slackID.MatchString(segs[i-2]) && slackID.MatchString(segs[i-1]):
			segs[i] = pathMarker(dec)
		case i >= 2 && isWebhooks(segs[:i-1]) && discordID.MatchString(segs[i-1]):
			segs[i] = pathMarker(dec)
		}
	}
	return strings.Join(segs, "/")
}

var (
	// telegramToken is a Telegram bot API segment: bot<id>:<secret>.
	telegramToken = regexp.MustCompile(`^bot[0-9]{3,}:[0-9A-Za-z_-]{10,}$`)
	// slackID is a Slack team or channel id in an incoming-webhook path.
	slackID = regexp.MustCompile(`^[TB][0-9A-Z]{6,}$`)
	// discordID is the numeric id before a webhook's token.
	discordID = regexp.MustCompile(`^[0-9]{5,}$`)
)

// isWebhooks reports whether segs end in a "webhooks" segment (Discord's
// /api/webhooks and /api/v10/webhooks, and lookalikes).
func isWebhooks(segs []string) bool {
	return len(segs) > 0 && strings.EqualFold(segs[len(segs)-1], "webhooks")
}

// URL renders u for logs: userinfo dropped, secret path segments and
// query parameters redacted, fragment dropped.
func (r *Redactor) URL(u *url.URL) string {
	c := *u
	c.User = nil
	c.Fragment, c.RawFragment = "", ""
	c.RawQuery = r.Query(u.RawQuery)
	raw := r.Path(u.EscapedPath())
	if dec, err := url.PathUnescape(raw); err == nil {
		c.Path, c.RawPath = dec, raw
	}
	return c.String()
}
