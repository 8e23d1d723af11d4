package firewall

import (
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// peerGuard drops new TCP connections to the proxy's transparent port and
// TCP and UDP to its DNS port that arrive on any interface other than a
// sandbox veth or loopback. The proxy listens on all addresses because the
// redirect lands on the primary address of each sandbox's host veth, one
// address per sandbox; binding there would mean one listener per sandbox.
// So the proxy binds wide and the filter decides who may reach it: a
// sandbox (only when redirected, by the rules before this one), a local
// process (loopback), nobody else. Replies to connections the host opened
// (conntrack established or related) are not affected, should an outgoing
// connection's local port coincide with a proxy port.
func peerGuard(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain, cfg Config) {
	notLocal := cat(
		notIfname(expr.MetaKeyIIFNAME, cfg.IfPrefix),
		notIfname(expr.MetaKeyIIFNAME, "lo\x00"),
		ctStateNot(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED),
	)
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(notLocal, l4proto(unix.IPPROTO_TCP), dport(cfg.ProxyPort), verdict(expr.VerdictDrop))})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(notLocal, l4proto(unix.IPPROTO_UDP), dport(cfg.DNSPort), verdict(expr.VerdictDrop))})
	// The proxy answers DNS over TCP on the same port.
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(notLocal, l4proto(unix.IPPROTO_TCP), dport(cfg.DNSPort), verdict(expr.VerdictDrop))})
}

// MetadataPrefixes are the destinations the proxy's own sockets can never
// reach except for DNS (port 53, where cloud resolvers live: Azure's
// 168.63.129.16, AWS's 169.254.169.253, GCP's 169.254.169.254): link-local,
// where most clouds serve instance metadata and credentials, Azure's
// WireServer, Alibaba's metadata service and AWS's IPv6 metadata address.
// The proxy's dialer refuses them already (unless the policy names them);
// this is the backstop should a proxy bug bypass the dialer.
var MetadataPrefixes = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("168.63.129.16/32"),
	netip.MustParsePrefix("100.100.100.200/32"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
}

// metadataGuard adds output chains to both tables that drop what sockets
// owned by uid send to MetadataPrefixes, DNS excepted. The proxy is
// identified by its uid (meta skuid: the fsuid that created the socket)
// rather than its cgroup: nftables resolves a cgroupv2 path to an id when
// the rule is loaded, and a restarted service gets a new cgroup, while a
// uid is stable under make run (root) and under systemd with a static
// User= (see deploy/systemd).
func metadataGuard(c *nftables.Conn, v4, v6 *nftables.Table, uid uint32) {
	accept := nftables.ChainPolicyAccept
	for _, t := range []*nftables.Table{v4, v6} {
		ch := c.AddChain(&nftables.Chain{
			Name: "output", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
		})
		owner := skuid(uid)
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(owner, l4proto(unix.IPPROTO_UDP), dport(53), verdict(expr.VerdictAccept))})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(owner, l4proto(unix.IPPROTO_TCP), dport(53), verdict(expr.VerdictAccept))})
		for _, p := range MetadataPrefixes {
			if p.Addr().Is4() != (t == v4) {
				continue
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: cat(owner, daddr(p), verdict(expr.VerdictDrop))})
		}
	}
}

// notIfname is ifname negated: the interface name does not start with
// prefix (a trailing NUL makes it an exact name).
func notIfname(key expr.MetaKey, prefix string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(prefix)},
	}
}

// ctStateNot matches packets whose conntrack state has none of bits.
func ctStateNot(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func skuid(uid uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(uid)},
	}
}

// daddr matches the destination address against p (ip or ip6 daddr, by
// the prefix's family).
func daddr(p netip.Prefix) []expr.Any {
	p = p.Masked()
	offset, size := uint32(16), 4 // ip daddr
	if p.Addr().Is6() {
		offset, size = 24, 16 // ip6 daddr
	}
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(size)}
	net := p.Addr().AsSlice()
	if p.Bits() == size*8 {
		return []expr.Any{load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net}}
	}
	mask := make([]byte, size)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		load,
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(size), Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net},
	}
}
