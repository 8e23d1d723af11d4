// Package dialer connects the proxy to upstreams: it resolves a host once,
// refuses special-purpose addresses, and dials exactly the address it
// checked, inside an optional allowlist enforced at the socket.
package dialer

import (
	"net/netip"
)

type specialRange struct {
	prefix netip.Prefix
	why    string
}

// Cloud metadata services come first so that a refusal names them; they
// serve instance credentials to whoever asks from the host.
var special4 = []specialRange{
	{netip.MustParsePrefix("169.254.169.254/32"), "cloud metadata"},
	{netip.MustParsePrefix("168.63.129.16/32"), "cloud metadata (Azure WireServer)"},
	{netip.MustParsePrefix("100.100.100.200/32"), "cloud metadata (Alibaba)"},
	{netip.MustParsePrefix("0.0.0.0/8"), "this-network"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space (CGNAT)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
	{netip.MustParsePrefix("192.31.196.0/24"), "AS112"},
	{netip.MustParsePrefix("192.52.193.0/24"), "AMT"},
	{netip.MustParsePrefix("192.88.99.0/24"), "6to4 relay anycast"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("192.175.48.0/24"), "AS112"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("255.255.255.255/32"), "broadcast"},
}

var special6 = []specialRange{
	{netip.MustParsePrefix("fd00:ec2::254/128"), "cloud metadata (AWS)"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible (deprecated)"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64"},
	{netip.MustParsePrefix("100::/64"), "discard-only"},
	{netip.MustParsePrefix("2001::/23"), "IETF protocol assignments (Teredo, ...)"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("3fff::/20"), "documentation"},
	{netip.MustParsePrefix("5f00::/16"), "SRv6 SIDs"},
	{netip.MustParsePrefix("fc00::/7"), "unique local"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fec0::/10"), "site-local (deprecated)"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

var (
	mapped4   = netip.MustParsePrefix("::ffff:0:0/96")
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
	global6   = netip.MustParsePrefix("2000::/3")
)

// Classify reports why ip is a special-purpose address the proxy must not
// dial for a sandbox, or "" when it is an ordinary public unicast address.
// IPv6 forms that embed an IPv4 address (mapped ::ffff:a.b.c.d, NAT64
// 64:ff9b::/96, 6to4 2002::/16) are judged by the embedded address;
// IPv4-compatible ::/96 is refused outright, as is any IPv6 address
// outside global unicast 2000::/3 and any address with a zone.
func Classify(ip netip.Addr) string {
	if !ip.IsValid() {
		return "invalid"
	}
	if ip.Zone() != "" {
		return "scoped (zone)"
	}
	if ip.Is4() {
		for _, r := range special4 {
			if r.prefix.Contains(ip) {
				return r.why
			}
		}
		return ""
	}
	if mapped4.Contains(ip) {
		if why := Classify(ip.Unmap()); why != "" {
			return "IPv4-mapped " + why
		}
		return ""
	}
	b := ip.As16()
	if nat64.Contains(ip) {
		if why := Classify(netip.AddrFrom4([4]byte(b[12:16]))); why != "" {
			return "NAT64 " + why
		}
		return ""
	}
	if sixToFour.Contains(ip) {
		if why := Classify(netip.AddrFrom4([4]byte(b[2:6]))); why != "" {
			return "6to4 " + why
		}
		return ""
	}
	for _, r := range special6 {
		if r.prefix.Contains(ip) {
			return r.why
		}
	}
	if !global6.Contains(ip) {
		return "not global unicast"
	}
	return ""
}
