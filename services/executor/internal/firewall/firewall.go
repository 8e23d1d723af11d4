// Package firewall owns the executor's nftables tables: from sandbox
// interfaces every TCP connection is redirected to the egress proxy and DNS
// to its resolver; everything else from a sandbox is dropped, the proxy's
// ports are closed to every other interface but loopback, a sandbox's UDP
// DNS packets past a rate are dropped, and the proxy's own sockets cannot
// reach metadata addresses.
package firewall

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Config says which interfaces are sandboxes and where their traffic goes.
type Config struct {
	// Table is the name of the executor's tables (one ip, one ip6).
	Table string
	// IfPrefix matches the host ends of sandbox veths.
	IfPrefix string
	// ProxyPort is the proxy's transparent TCP port on this host.
	ProxyPort uint16
	// DNSPort is the proxy's DNS port (UDP) on this host.
	DNSPort uint16
	// ProxyUID is the uid the egress proxy runs as: its own connections
	// to link-local and cloud metadata addresses are dropped (see
	// metadataGuard), whatever the proxy's code does.
	ProxyUID uint32
	// DNSPacketRate bounds the UDP DNS packets a second (and burst) of
	// each sandbox address; past it they are dropped in the kernel (see
	// dnsFloodGuard). Zero means DefaultDNSPacketRate.
	DNSPacketRate uint32
}

// Install replaces the executor's tables with fresh ones, atomically: the
// old tables (a previous executor's leftovers) and the new ones are swapped
// in one netlink batch.
func Install(cfg Config) error { return install(cfg) }

// install is Install on a connection made with opts (a test's own
// network namespace).
func install(cfg Config, opts ...nftables.ConnOption) error {
	if cfg.Table == "" || cfg.IfPrefix == "" || cfg.ProxyPort == 0 || cfg.DNSPort == 0 {
		return errors.New("firewall: table, interface prefix, proxy port and DNS port are required")
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	deleteTables(c, cfg.Table)

	v4 := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: cfg.Table})
	pre := c.AddChain(&nftables.Chain{
		Name: "prerouting", Table: v4, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
	})
	fromSandbox := ifname(expr.MetaKeyIIFNAME, cfg.IfPrefix)
	// UDP 53 first: the TCP rule would not match it anyway, but DNS over TCP
	// goes to the proxy's transparent port like any TCP, where it is
	// refused as not HTTP.
	c.AddRule(&nftables.Rule{Table: v4, Chain: pre, Exprs: cat(fromSandbox, l4proto(unix.IPPROTO_UDP), dport(53), redirect(cfg.DNSPort))})
	c.AddRule(&nftables.Rule{Table: v4, Chain: pre, Exprs: cat(fromSandbox, l4proto(unix.IPPROTO_TCP), redirect(cfg.ProxyPort))})

	drop := nftables.ChainPolicyAccept
	in := c.AddChain(&nftables.Chain{
		Name: "input", Table: v4, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &drop,
	})
	rate := cfg.DNSPacketRate
	if rate == 0 {
		rate = DefaultDNSPacketRate
	}
	if err := dnsFloodGuard(c, v4, in, fromSandbox, cfg.DNSPort, rate); err != nil {
		return fmt.Errorf("nftables DNS flood guard: %w", err)
	}
	c.AddRule(&nftables.Rule{Table: v4, Chain: in, Exprs: cat(fromSandbox, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))})
	c.AddRule(&nftables.Rule{Table: v4, Chain: in, Exprs: cat(fromSandbox, ctRedirected(), l4proto(unix.IPPROTO_TCP), dport(cfg.ProxyPort), verdict(expr.VerdictAccept))})
	c.AddRule(&nftables.Rule{Table: v4, Chain: in, Exprs: cat(fromSandbox, ctRedirected(), l4proto(unix.IPPROTO_UDP), dport(cfg.DNSPort), verdict(expr.VerdictAccept))})
	c.AddRule(&nftables.Rule{Table: v4, Chain: in, Exprs: cat(fromSandbox, verdict(expr.VerdictDrop))})
	peerGuard(c, v4, in, cfg)

	fwd := c.AddChain(&nftables.Chain{
		Name: "forward", Table: v4, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop,
	})
	c.AddRule(&nftables.Rule{Table: v4, Chain: fwd, Exprs: cat(fromSandbox, verdict(expr.VerdictDrop))})
	c.AddRule(&nftables.Rule{Table: v4, Chain: fwd, Exprs: cat(ifname(expr.MetaKeyOIFNAME, cfg.IfPrefix), verdict(expr.VerdictDrop))})

	// Sandboxes have IPv6 disabled; should it come back, nothing passes.
	v6 := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv6, Name: cfg.Table})
	for _, hook := range []struct {
		name string
		num  *nftables.ChainHook
	}{{"input", nftables.ChainHookInput}, {"forward", nftables.ChainHookForward}} {
		ch := c.AddChain(&nftables.Chain{
			Name: hook.name, Table: v6, Type: nftables.ChainTypeFilter,
			Hooknum: hook.num, Priority: nftables.ChainPriorityFilter, Policy: &drop,
		})
		c.AddRule(&nftables.Rule{Table: v6, Chain: ch, Exprs: cat(fromSandbox, verdict(expr.VerdictDrop))})
		c.AddRule(&nftables.Rule{Table: v6, Chain: ch, Exprs: cat(ifname(expr.MetaKeyOIFNAME, cfg.IfPrefix), verdict(expr.VerdictDrop))})
		if hook.name == "input" {
			peerGuard(c, v6, ch, cfg)
		}
	}
	metadataGuard(c, v4, v6, cfg.ProxyUID)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables tables %s: %w", cfg.Table, err)
	}
	return nil
}

// Remove deletes the executor's tables; absent tables are not an error.
func Remove(table string) error { return remove(table) }

func remove(table string, opts ...nftables.ConnOption) error {
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	deleteTables(c, table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove nftables tables %s: %w", table, err)
	}
	return nil
}

// deleteTables queues the deletion of the named tables that exist.
func deleteTables(c *nftables.Conn, name string) {
	tables, err := c.ListTables()
	if err != nil {
		return
	}
	for _, t := range tables {
		if t.Name == name && (t.Family == nftables.TableFamilyIPv4 || t.Family == nftables.TableFamilyIPv6) {
			c.DelTable(t)
		}
	}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// ifname matches an interface name prefix, as nft's `iifname "sp*"` does:
// a comparison of the first len(prefix) bytes.
func ifname(key expr.MetaKey, prefix string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(prefix)},
	}
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// dport matches the destination port of TCP or UDP (same offset in both).
func dport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func redirect(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// ctStatusDstNAT is IPS_DST_NAT from linux/netfilter/nf_conntrack_common.h.
const ctStatusDstNAT = 1 << 5

// ctRedirected matches connections whose destination the prerouting chain
// rewrote, so a sandbox can reach the proxy's ports only by being
// redirected there.
func ctRedirected() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ctStatusDstNAT), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func verdict(k expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: k}}
}
