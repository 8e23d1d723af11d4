package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// idnaProfile is UTS #46 lookup processing (non-transitional, with the bidi
// and joiner rules) minus two checks that real names fail: CheckHyphens, so
// labels such as "r3---sn-abc" pass as they do in browsers, and the STD3
// ASCII rules, so underscores (my_bucket.s3.amazonaws.com) survive as they
// do in the egress proxy. checkDNSName then checks the ASCII result.
var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.CheckHyphens(false),
	idna.CheckJoiners(true),
	idna.StrictDomainName(false),
	idna.VerifyDNSLength(true),
	idna.Transitional(false),
)

const (
	maxHostLen  = 253
	maxLabelLen = 63
)

// CanonicalHost returns the form of host that policies are matched on:
// lowercase, one trailing dot removed, internationalized labels converted to
// their ASCII (xn--) form; an IP literal in its standard text form (IPv4
// dotted-decimal, IPv6 without brackets, as netip prints them). It fails on
// names that are not host names (empty or over-long labels, characters other
// than letters, digits, "-" and "_", leading or trailing hyphens), on a port,
// and on names whose last label is numeric but that are not IPv4 literals in
// dotted-decimal form (0x7f.1, 1.2.3, 010.0.0.1): the egress proxy resolves
// those inet_aton spellings to addresses before it asks.
func CanonicalHost(host string) (string, error) {
	if isCanonicalHost(host) {
		return host, nil
	}
	return canonicalHostSlow(host)
}

func canonicalHostSlow(host string) (string, error) {
	if inner, ok := strings.CutPrefix(host, "["); ok {
		inner, ok = strings.CutSuffix(inner, "]")
		if a, err := netip.ParseAddr(inner); ok && err == nil && a.Is6() && a.Zone() == "" {
			return a.String(), nil
		}
		return "", errors.New("not a valid bracketed IPv6 literal")
	}
	if strings.Contains(host, ":") {
		if a, err := netip.ParseAddr(host); err == nil && a.Is6() && a.Zone() == "" {
			return a.String(), nil
		}
		return "", errors.New(`has ":" but is not an IPv6 literal: a host has no port`)
	}
	h := strings.TrimSuffix(host, ".")
	if h == "" {
		return "", errors.New("empty host")
	}
	if isIPv4(h) {
		return h, nil
	}
	if !utf8.ValidString(h) {
		return "", errors.New("host is not valid UTF-8")
	}
	ascii, err := idnaProfile.ToASCII(h)
	if err != nil {
		return "", fmt.Errorf("convert host to ASCII: %w", err)
	}
	// The result must itself be canonical, or the proxy and a policy could
	// disagree about a name that canonicalizes in two steps.
	if again, err := idnaProfile.ToASCII(ascii); err != nil || again != ascii {
		return "", fmt.Errorf("host %q does not have a stable ASCII form", h)
	}
	if isIPv4(ascii) {
		return ascii, nil
	}
	if err := checkDNSName(ascii); err != nil {
		return "", err
	}
	return ascii, nil
}

// isCanonicalHost is the allocation-free check for the common case of a host
// that is already canonical. It accepts nothing CanonicalHost would change or
// reject: labels starting with "xn--" need punycode validation and go the
// slow way.
func isCanonicalHost(h string) bool {
	if isIPLiteral(h) {
		return true
	}
	if checkDNSName(h) != nil {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if strings.HasPrefix(label, "xn--") {
			return false
		}
	}
	return true
}

// isIPv4 reports whether s is an IPv4 literal in canonical dotted-decimal
// form (no leading zeros, four parts).
func isIPv4(s string) bool {
	if len(s) < len("0.0.0.0") || len(s) > len("255.255.255.255") {
		return false
	}
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is4() && a.String() == s
}

// isIPLiteral reports whether s is an IP literal in canonical form.
func isIPLiteral(s string) bool {
	if isIPv4(s) {
		return true
	}
	if !strings.Contains(s, ":") {
		return false
	}
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6() && a.Zone() == "" && a.String() == s
}

// checkDNSName checks an ASCII name against the host name rules: lowercase
// letters, digits, hyphens and underscores, labels of 1 to 63 bytes that neither start
// nor end with a hyphen, at most 253 bytes, and a last label that is not all
// digits (it would read as an address to some resolvers).
func checkDNSName(s string) error {
	if s == "" {
		return errors.New("empty host")
	}
	if len(s) > maxHostLen {
		return fmt.Errorf("host is longer than %d bytes", maxHostLen)
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			c := s[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("host has invalid character %q", c)
			}
			continue
		}
		label := s[start:i]
		switch {
		case label == "":
			return errors.New("host has an empty label")
		case len(label) > maxLabelLen:
			return fmt.Errorf("host label %q is longer than %d bytes", label, maxLabelLen)
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("host label %q starts or ends with a hyphen", label)
		}
		if i == len(s) && allDigits(label) {
			return errors.New("host's last label is numeric but the host is not an IPv4 address")
		}
		start = i + 1
	}
	return nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// hostPattern is a canonical host pattern: an exact host, or for a wildcard
// the suffix after "*." .
type hostPattern struct {
	name     string
	wildcard bool
}

func (p hostPattern) String() string {
	if p.wildcard {
		return "*." + p.name
	}
	return p.name
}

// parseHostPattern canonicalizes a policy's host field. IP literals are
// allowed as exact hosts so an operator can name an address the proxy would
// otherwise refuse; they never appear under a wildcard.
func parseHostPattern(s string) (hostPattern, error) {
	if s == "" {
		return hostPattern{}, errors.New("required")
	}
	if s == "*" || s == "*." {
		return hostPattern{}, errors.New(`a bare "*" is not allowed: set the policy's default instead`)
	}
	rest, wildcard := strings.CutPrefix(s, "*.")
	if strings.Contains(rest, "*") {
		return hostPattern{}, errors.New(`"*" is only allowed as the whole first label ("*.example.com")`)
	}
	h, err := CanonicalHost(rest)
	if err != nil {
		return hostPattern{}, err
	}
	if wildcard {
		if isIPLiteral(h) {
			return hostPattern{}, errors.New("a wildcard cannot cover IP addresses")
		}
		if !strings.Contains(h, ".") {
			return hostPattern{}, errors.New(`a wildcard needs at least two labels after "*." ("*.example.com")`)
		}
	}
	return hostPattern{name: h, wildcard: wildcard}, nil
}

// hostIndex finds the entry that governs a host: the exact entry if there is
// one, else the wildcard with the longest suffix.
type hostIndex[T any] struct {
	exact    map[string]T
	wildcard map[string]T
}

func newHostIndex[T any]() hostIndex[T] {
	return hostIndex[T]{exact: map[string]T{}, wildcard: map[string]T{}}
}

// add reports false if the pattern is already present.
func (x hostIndex[T]) add(p hostPattern, v T) bool {
	m := x.exact
	if p.wildcard {
		m = x.wildcard
	}
	if _, dup := m[p.name]; dup {
		return false
	}
	m[p.name] = v
	return true
}

// lookup takes a canonical host. Walking the dots from the left tries the
// longest proper suffix first, so the most specific wildcard wins, and a
// wildcard never matches its own suffix (*.example.com is not example.com).
func (x hostIndex[T]) lookup(host string) (T, bool) {
	if v, ok := x.exact[host]; ok {
		return v, true
	}
	if len(x.wildcard) > 0 && !isIPLiteral(host) {
		for i := 0; i < len(host); i++ {
			if host[i] != '.' {
				continue
			}
			if v, ok := x.wildcard[host[i+1:]]; ok {
				return v, true
			}
		}
	}
	var zero T
	return zero, false
}
