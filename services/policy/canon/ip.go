package canon

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

var (
	compat4   = netip.MustParsePrefix("::/96")
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// embeddedIPv4 returns the IPv4 address an IPv6 address stands for, if it
// stands for one: IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96 (but ::
// and ::1, which are IPv6's own unspecified and loopback addresses), NAT64
// 64:ff9b::/96 and 6to4 2002::/16. The local-use NAT64 prefix
// 64:ff9b:1::/48 and Teredo put the IPv4 address where only the operator
// of the network knows, so they stay IPv6 (and the proxy's dialer refuses
// them as special-purpose).
func embeddedIPv4(ip netip.Addr) (netip.Addr, bool) {
	if !ip.Is6() {
		return netip.Addr{}, false
	}
	if ip.Is4In6() {
		return ip.Unmap(), true
	}
	b := ip.As16()
	switch {
	case compat4.Contains(ip) && !ip.IsUnspecified() && !ip.IsLoopback(), nat64.Contains(ip):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	}
	return netip.Addr{}, false
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

// isNumberLabel is WHATWG URL's "ends in a number" test for one label:
// decimal digits, or "0x" followed by hex digits (or nothing).
func isNumberLabel(s string) bool {
	if s == "" {
		return false
	}
	if len(s) > 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		for i := 2; i < len(s); i++ {
			if !isHexByte(s[i]) {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
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
