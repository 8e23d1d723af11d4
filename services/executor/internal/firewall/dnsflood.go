package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// DefaultDNSPacketRate is the default of Config.DNSPacketRate: UDP DNS
// packets per second one sandbox may send. It is ten times the
// proxy's own per-source DNS rate (whose refusals a program sees as
// REFUSED answers), and far below what one sandbox can send (about 50,000
// a second here), which overflows the proxy's one UDP socket in the kernel
// so that a neighbour's query is lost with the flood's.
const DefaultDNSPacketRate = 1000

// DNSPacketBurst is the burst of the DNS flood meter, the proxy's own
// per-source DNS burst: what the proxy would answer passes at once, while
// a burst a slow reader's socket could not hold (a 1,000-packet burst
// overflowed a 208 KiB receive buffer on a loaded host) does not.
const DNSPacketBurst = 200

// dnsFloodSet is the dynamic set of sandbox addresses the guard meters.
const dnsFloodSet = "dns_flood"

// dnsFloodGuard drops UDP packets from a sandbox to the proxy's DNS port
// past rate a second (burst DNSPacketBurst, or rate if lower) per source
// address, in the input chain,
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
			Exprs: []expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(rate), Over: true, Unit: expr.LimitTimeSecond, Burst: min(rate, DNSPacketBurst)}},
		},
	}, verdict(expr.VerdictDrop))})
	return nil
}

// ForgetDNSMeter removes addr's entry from the DNS flood meter, so that
// the next sandbox given the address starts with a full burst rather than
// what its predecessor left (an entry otherwise lives 10 s past its last
// packet). No entry is not an error.
func ForgetDNSMeter(table string, addr netip.Addr) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	// The set is named, not looked up: one netlink round trip per
	// execution, not two.
	set := &nftables.Set{Table: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: table}, Name: dnsFloodSet, KeyType: nftables.TypeIPAddr}
	key := addr.As4()
	if err := c.SetDeleteElements(set, []nftables.SetElement{{Key: key[:]}}); err != nil {
		return err
	}
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("forget %s in the DNS flood meter: %w", addr, err)
	}
	return nil
}
