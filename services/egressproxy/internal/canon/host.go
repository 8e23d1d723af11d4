// Package canon turns request hosts and paths into the one canonical form
// the policy is matched against and the request is forwarded with.
package canon

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Host is a canonical request host.
type Host struct {
	// Name is the canonical spelling: lowercase ASCII (IDNA A-labels), no
	// trailing dot; for an IP literal, the address's standard text form.
	Name string
	// IP is set when the host was an IP literal in any spelling (dotted,
	// a single decimal, hex or octal number, partial dotted forms as
	// inet_aton reads them, or bracketed IPv6).
	IP netip.Addr
}

// IsIP reports whether the host was an IP literal.
func (h Host) IsIP() bool { return h.IP.IsValid() }

// ErrHost is wrapped by every error CanonicalHost returns.
var ErrHost = errors.New("invalid host")

// Non-transitional UTS 46 mapping without the STD3 rules, so that
// underscores (seen in real DNS names) survive; the ASCII result is then
// checked label by label by checkLabels, which is stricter than STD3 about
// everything else.
var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.VerifyDNSLength(true),
)

// CanonicalHost returns the canonical form of a host name without a port.
func CanonicalHost(raw string) (Host, error) {
	if raw == "" {
		return Host{}, fmt.Errorf("%w: empty", ErrHost)
	}
	if strings.HasPrefix(raw, "[") {
		if !strings.HasSuffix(raw, "]") {
			return Host{}, fmt.Errorf("%w: unterminated IPv6 literal %q", ErrHost, raw)
		}
		ip, err := netip.ParseAddr(raw[1 : len(raw)-1])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return Host{}, fmt.Errorf("%w: bad IPv6 literal %q", ErrHost, raw)
		}
		return Host{Name: ip.String(), IP: ip}, nil
	}
	if strings.Contains(raw, ":") {
		// An unbracketed IPv6 address, or a host:port passed by mistake.
		if ip, err := netip.ParseAddr(raw); err == nil && ip.Zone() == "" {
			return Host{Name: ip.String(), IP: ip}, nil
		}
		return Host{}, fmt.Errorf("%w: %q contains a colon", ErrHost, raw)
	}
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; c < 0x21 || c == 0x7f || c == '%' || c == '/' || c == '\\' || c == '@' {
			return Host{}, fmt.Errorf("%w: %q contains byte %#x", ErrHost, raw, c)
		}
	}
	if !utf8.ValidString(raw) {
		return Host{}, fmt.Errorf("%w: not UTF-8", ErrHost)
	}
	// IDNA first: it maps full-width digits and ideographic full stops to
	// ASCII, so "１２７。０。０。１" is caught as the IP literal it becomes.
	ascii, err := idnaProfile.ToASCII(raw)
	if err != nil {
		// Retry without the trailing dot, which some profiles reject.
		ascii, err = idnaProfile.ToASCII(strings.TrimSuffix(raw, "."))
		if err != nil {
			return Host{}, fmt.Errorf("%w: %q: %v", ErrHost, raw, err)
		}
	}
	name := strings.ToLower(strings.TrimSuffix(ascii, "."))
	if name == "" {
		return Host{}, fmt.Errorf("%w: empty", ErrHost)
	}
	if ip, numeric, err := parseIPv4Any(name); numeric {
		if err != nil {
			// WHATWG URL rule: a name whose last label is numeric is an
			// IPv4 address or invalid, never a domain.
			return Host{}, fmt.Errorf("%w: %q looks numeric but is no IPv4 address: %v", ErrHost, raw, err)
		}
		return Host{Name: ip.String(), IP: ip}, nil
	}
	if err := checkLabels(name); err != nil {
		return Host{}, fmt.Errorf("%w: %q: %v", ErrHost, raw, err)
	}
	return Host{Name: name}, nil
}

func checkLabels(name string) error {
	if len(name) > 253 {
		return errors.New("longer than 253 bytes")
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" {
			return errors.New("empty label")
		}
		if len(label) > 63 {
			return errors.New("label longer than 63 bytes")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '_':
			case c == '-':
				if i == 0 || i == len(label)-1 {
					return fmt.Errorf("label %q starts or ends with a hyphen", label)
				}
			default:
				return fmt.Errorf("label %q contains %q", label, c)
			}
		}
	}
	return nil
}

// parseIPv4Any reads an IPv4 address the way inet_aton and URL parsers do:
// one to four parts, each decimal, 0x-hex or 0-octal, the last part filling
// the remaining bytes. numeric reports whether the last label is a number,
// in which case name is an address or an error, never a domain.
func parseIPv4Any(name string) (ip netip.Addr, numeric bool, err error) {
	parts := strings.Split(name, ".")
	if !isNumberLabel(parts[len(parts)-1]) {
		return netip.Addr{}, false, nil
	}
	if len(parts) > 4 {
		return netip.Addr{}, true, errors.New("more than four parts")
	}
	vals := make([]uint64, len(parts))
	for i, p := range parts {
		v, err := parseIPv4Part(p)
		if err != nil {
			return netip.Addr{}, true, err
		}
		vals[i] = v
	}
	var out uint64
	for i, v := range vals[:len(vals)-1] {
		if v > 255 {
			return netip.Addr{}, true, fmt.Errorf("part %d out of range", i)
		}
		out |= v << (8 * (3 - i))
	}
	last := vals[len(vals)-1]
	if last >= 1<<(8*(5-len(vals))) {
		return netip.Addr{}, true, errors.New("last part out of range")
	}
	out |= last
	return netip.AddrFrom4([4]byte{byte(out >> 24), byte(out >> 16), byte(out >> 8), byte(out)}), true, nil
}

func isNumberLabel(s string) bool {
	if s == "" {
		return false
	}
	if len(s) > 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		for _, c := range s[2:] {
			if !isHex(c) {
				return false
			}
		}
		return true
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func isHex(c rune) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func parseIPv4Part(p string) (uint64, error) {
	if p == "" {
		return 0, errors.New("empty part")
	}
	base := 10
	digits := p
	switch {
	case len(p) > 1 && (p[:2] == "0x" || p[:2] == "0X"):
		base, digits = 16, p[2:]
		if digits == "" {
			return 0, nil
		}
	case len(p) > 1 && p[0] == '0':
		base, digits = 8, p[1:]
	}
	v, err := strconv.ParseUint(digits, base, 32)
	if err != nil {
		return 0, fmt.Errorf("part %q: %w", p, err)
	}
	return v, nil
}

// SplitHostPort splits an authority (Host header, :authority, SNI) into
// its canonical host and its port ("" when none was given).
func SplitHostPort(authority string) (Host, string, error) {
	host, port, split := authority, "", false
	if i := strings.LastIndexByte(authority, ':'); i >= 0 {
		if strings.HasPrefix(authority, "[") {
			if j := strings.LastIndexByte(authority, ']'); j >= 0 && j == i-1 {
				host, port, split = authority[:i], authority[i+1:], true
			}
		} else if strings.Count(authority, ":") == 1 {
			host, port, split = authority[:i], authority[i+1:], true
		}
	}
	if split {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return Host{}, "", fmt.Errorf("%w: bad port in %q", ErrHost, authority)
		}
	}
	h, err := CanonicalHost(host)
	return h, port, err
}
