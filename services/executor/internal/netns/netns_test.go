//go:build integration

package netns

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// TestDeleteLinkAlreadyGone deletes a veth that is not there, as when the
// kernel destroyed it with its namespace between Sweep's listing and its
// delete: not an error, and not counted.
func TestDeleteLinkAlreadyGone(t *testing.T) {
	deleted, err := deleteLink(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sgnotthere0", Index: 1 << 30}, PeerName: "sgnotthere1"})
	if err != nil || deleted {
		t.Fatalf("deleteLink of a missing veth: deleted %v, error %v; want neither", deleted, err)
	}
}

// TestForgetFlowsOfThePool puts three flows in the connection tracking of
// a namespace of its own (no packet is sent): one from a pool address,
// redirected as the firewall does, one to another, one of an address
// outside the pool. forgetFlows deletes the first two and leaves the
// third.
func TestForgetFlowsOfThePool(t *testing.T) {
	const name = "sandpit-test-flows"
	ns, err := newNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	t.Cleanup(func() { _ = removeNamed(filepath.Join(netnsDir, name)) })
	ip := func(s string) net.IP { return net.ParseIP(s).To4() }
	flow := func(src, dst string, sport, dport uint16, natSrc string, natPort uint16) *netlink.ConntrackFlow {
		return &netlink.ConntrackFlow{
			FamilyType: unix.AF_INET,
			Forward:    netlink.IPTuple{SrcIP: ip(src), DstIP: ip(dst), SrcPort: sport, DstPort: dport, Protocol: unix.IPPROTO_TCP},
			Reverse:    netlink.IPTuple{SrcIP: ip(natSrc), DstIP: ip(src), SrcPort: natPort, DstPort: sport, Protocol: unix.IPPROTO_TCP},
			TimeOut:    60,
			ProtoInfo:  &netlink.ProtoInfoTCP{State: nl.TCP_CONNTRACK_ESTABLISHED},
		}
	}
	flows := []*netlink.ConntrackFlow{
		flow("10.89.0.2", "198.18.0.1", 41234, 443, "10.89.0.1", 15001),  // a sandbox's, redirected
		flow("10.89.0.5", "10.89.0.6", 15001, 41235, "10.89.0.6", 41235), // to a sandbox
		flow("10.90.0.2", "198.18.0.1", 41234, 443, "10.90.0.1", 15001),  // outside the pool
	}
	err = inNamespace(ns, func() error {
		for _, f := range flows {
			if err := netlink.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
				return fmt.Errorf("create %s: %w", f, err)
			}
		}
		n, err := forgetFlows(netip.MustParsePrefix("10.89.0.0/24"))
		if err != nil {
			return err
		}
		left, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			return err
		}
		if n != 2 || len(left) != 1 || !left[0].Forward.SrcIP.Equal(ip("10.90.0.2")) {
			return fmt.Errorf("forgetFlows deleted %d, left %v; want 2 deleted and 10.90.0.2's left", n, left)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
