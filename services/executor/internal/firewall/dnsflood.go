package firewall

import (
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// DefaultDNSPacketRate is the default of Config.DNSPacketRate: UDP DNS
// packets per second, and burst, one sandbox may send. It is ten times the
// proxy's own per-source DNS rate (whose refusals a program sees as
// REFUSED answers), and far below what one sandbox can send (about 50,000
// a second here), which overflows the proxy's one UDP socket in the kernel
// so that a neighbour's query is lost with the flood's.
const DefaultDNSPacketRate = 1000

// dnsFloodSet is the dynamic set of sandbox addresses the guard meters.
const dnsFloodSet = "dns_flood"

// dnsFloodGuard drops UDP packets from a sandbox to the proxy's DNS port
// past rate a second (burst rate) per source address, in the input chain,
// before conntrack's accept of established flows: the limit is kept per
// address in a dynamic set whose entries expire 10 s after their last
// packet, as nft's `meter` does.
func dnsFloodGuard(c *nftables.Conn, v4 *nftables.Table, in *nftables.Chain, fromSandbox []expr.Any, dnsPort uint16, rate uint32) error {
	set := &nftables.Set{
		Table: v4, Name: dnsFloodSet, KeyType: nftables.TypeIPAddr,
		Dynamic: true, HasTimeout: true, Timeout: 10 * time.Second, Size: 65535,
	}
	if err := c.AddSet(set, nil); err != nil {
		return err
	}
	c.AddRule(&nftables.Rule{Table: v4, Chain: in, Exprs: cat(fromSandbox, l4proto(unix.IPPROTO_UDP), dport(dnsPort), []expr.Any{
		// ip saddr
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Dynset{
			SrcRegKey: 1, SetName: set.Name, SetID: set.ID, Operation: uint32(unix.NFT_DYNSET_OP_UPDATE),
			Exprs: []expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(rate), Over: true, Unit: expr.LimitTimeSecond, Burst: rate}},
		},
	}, verdict(expr.VerdictDrop))})
	return nil
}
