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
	// trailing dot; for an IP literal, the address's standard text form
	// (IPv6 without brackets).
	Name string
	// IP is set when the host was an IP literal in any spelling (dotted,
	// a single decimal, hex or octal number, partial dotted forms as
	// inet_aton reads them, or IPv6). An IPv6 spelling of an IPv4 address
	// (see [CanonicalHost]) is that IPv4 address.
	IP netip.Addr
}

// IsIP reports whether the host was an IP literal.
func (h Host) IsIP() bool { return h.IP.IsValid() }

// ErrHost is wrapped by every error CanonicalHost returns.
var ErrHost = errors.New("invalid host")

// idnaProfile is UTS #46 processing as the WHATWG URL standard's "domain to
// ASCII" does it, because the client in a sandbox is Node.js, whose URL
// parser follows that standard: the name the policy decides on is the name
// the client's own parser produced. So: non-transitional (ß and ς stay
// themselves, faß.de is xn--fa-hia.de, not fass.de, as in browsers and
// Node), bidi and joiner rules on, CheckHyphens off (real names such as
// r3---sn-abc.googlevideo.com have "--" in the third and fourth place) and
// the STD3 rules off (underscores, as in my_bucket.s3.amazonaws.com,
// survive). Where WHATWG is lenient we are strict: DNS lengths are
// verified, and checkLabels then admits only letters, digits, "-" and "_"
// in the ASCII result, with no label starting or ending with "-".
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

// CanonicalHost returns the canonical form of a host without a port, as a
// client or server might spell it: in any case, with one trailing dot, in
// Unicode or full-width forms, or as an IP literal in any spelling.
//
// An IPv4 address is canonical in dotted decimal, whichever of the
// inet_aton spellings (0x7f.1, 2130706433, 0177.0.0.1) it came in. An IPv6
// address that stands for an IPv4 address is that IPv4 address: mapped
// (::ffff:a.b.c.d), compatible (::a.b.c.d, except :: and ::1), NAT64
// (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::/48, which is the 6to4
// router a.b.c.d: every packet to it is delivered to that IPv4 address). A
// policy that names a.b.c.d therefore governs every spelling, and the proxy
// dials the IPv4 address it decided on.
func CanonicalHost(raw string) (Host, error) {
	if raw == "" {
		return Host{}, fmt.Errorf("%w: empty", ErrHost)
	}
	if inner, ok := strings.CutPrefix(raw, "["); ok {
		inner, ok = strings.CutSuffix(inner, "]")
		if !ok {
			return Host{}, fmt.Errorf("%w: unterminated IPv6 literal %q", ErrHost, raw)
		}
		ip, err := netip.ParseAddr(inner)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return Host{}, fmt.Errorf("%w: bad IPv6 literal %q", ErrHost, raw)
		}
		return ipHost(ip), nil
	}
	if strings.Contains(raw, ":") {
		// An unbracketed IPv6 address, or a host:port passed by mistake.
		if ip, err := netip.ParseAddr(raw); err == nil && ip.Is6() && ip.Zone() == "" {
			return ipHost(ip), nil
		}
		return Host{}, fmt.Errorf("%w: %q has a colon but is no IPv6 address (a host has no port)", ErrHost, raw)
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
	// The result must be a fixed point, or a name could canonicalize to
	// one thing here and to another when canonicalized again.
	if again, err := idnaProfile.ToASCII(name); err != nil || again != name {
		return Host{}, fmt.Errorf("%w: %q has no stable ASCII form", ErrHost, raw)
	}
	return Host{Name: name}, nil
}

func ipHost(ip netip.Addr) Host {
	if v4, ok := embeddedIPv4(ip); ok {
		ip = v4
	}
	return Host{Name: ip.String(), IP: ip}
}

func checkLabels(name string) error {
	if len(name) > maxHostLen {
		return fmt.Errorf("longer than %d bytes", maxHostLen)
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" {
			return errors.New("empty label")
		}
		if len(label) > maxLabelLen {
			return fmt.Errorf("label longer than %d bytes", maxLabelLen)
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

// CheckHost reports whether host is canonical: a [Host.Name] that
// CanonicalHost returns, which CanonicalHost returns unchanged. Its error
// wraps [ErrHost] when host is no host in any spelling, [ErrNotCanonical]
// when it is one but spelled otherwise ("API.example.com", "[::1]",
// "::ffff:10.0.0.5", "0x7f.1").
func CheckHost(host string) error {
	if isCanonicalHost(host) {
		return nil
	}
	h, err := CanonicalHost(host)
	if err != nil {
		return err
	}
	if h.Name != host {
		return fmt.Errorf("%w: host %q is %q in canonical form", ErrNotCanonical, host, h.Name)
	}
	return nil
}

// isCanonicalHost is the allocation-free check for the common case of a
// host that is already canonical. It accepts nothing CanonicalHost would
// change or reject; labels starting with "xn--" need punycode validation
// and are left to CanonicalHost.
func isCanonicalHost(s string) bool {
	if strings.IndexByte(s, ':') >= 0 {
		ip, err := netip.ParseAddr(s)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return false
		}
		if _, ok := embeddedIPv4(ip); ok {
			return false
		}
		var buf [64]byte
		return string(ip.AppendTo(buf[:0])) == s
	}
	if s == "" || checkLabels(s) != nil {
		return false
	}
	if isNumberLabel(s[strings.LastIndexByte(s, '.')+1:]) {
		// netip accepts IPv4 only in canonical dotted decimal: four parts,
		// no leading zeros.
		ip, err := netip.ParseAddr(s)
		return err == nil && ip.Is4()
	}
	for label := range strings.SplitSeq(s, ".") {
		if strings.HasPrefix(label, "xn--") {
			return false
		}
	}
	return true
}
