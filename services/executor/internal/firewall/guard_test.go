//go:build integration

package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sandpit-run/sandpit/services/executor/internal/netns"
)

// A peer is any host on a network the executor's host is attached to: here
// a namespace behind a veth whose name does not carry the sandbox prefix.
func TestProxyPortsUnreachableFromPeers(t *testing.T) {
	h := setup(t)
	m, err := netns.NewManager(netip.MustParsePrefix("10.251.1.0/24"), "sq", "spfwpeer-")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := m.Create(fmt.Sprintf("peer%d", time.Now().UnixNano()%100000))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Delete(peer); err != nil {
			t.Error(err)
		}
	})
	// Another port on the host, so a refused proxy port is the rule's
	// doing and not a peer that cannot reach the host at all.
	other, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	proxyPort := h.proxy.Addr().(*net.TCPAddr).Port
	dnsPort := h.dns.LocalAddr().(*net.UDPAddr).Port
	otherPort := other.Addr().(*net.TCPAddr).Port

	dial := func(sb *netns.Sandbox, dst netip.AddrPort) error {
		return sb.Do(func() error {
			c, err := net.DialTimeout("tcp4", dst.String(), time.Second)
			if err != nil {
				return err
			}
			return c.Close()
		})
	}
	expectAccepted := func(what string, from netip.Addr) {
		t.Helper()
		select {
		case got := <-h.accepted:
			if got.src.Addr() != from {
				t.Errorf("%s: proxy saw a connection from %v, want %v", what, got.src, from)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("%s: no connection reached the proxy", what)
		}
	}

	if err := dial(peer, netip.AddrPortFrom(peer.HostIP, uint16(otherPort))); err != nil {
		t.Fatalf("peer cannot reach another host port (test broken): %v", err)
	}
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(peer.HostIP, uint16(proxyPort)), // the address facing it
		netip.AddrPortFrom(h.a.HostIP, uint16(proxyPort)),  // a sandbox's gateway
	} {
		if err := dial(peer, dst); err == nil {
			t.Errorf("peer connected to the proxy port at %s", dst)
		} else if !errors.Is(err, syscall.ETIMEDOUT) && !isTimeout(err) {
			t.Errorf("peer dial %s: %v, want a timeout (dropped)", dst, err)
		}
		// The sandbox next door is redirected to the proxy meanwhile.
		if err := dial(h.a, netip.AddrPortFrom(h.a.HostIP, 443)); err != nil {
			t.Fatalf("sandbox dial: %v", err)
		}
		expectAccepted("sandbox", h.a.SandboxIP)
	}
	select {
	case got := <-h.accepted:
		t.Errorf("proxy accepted a connection from %v", got.src)
	default:
	}
	// DNS over TCP on the DNS port (h.dnsTCP) is out of the peer's reach
	// too.
	if err := dial(peer, netip.AddrPortFrom(peer.HostIP, uint16(dnsPort))); err == nil || !isTimeout(err) {
		t.Errorf("peer dial TCP DNS port: %v, want a timeout (dropped)", err)
	}
	// DNS port: the peer's datagram is dropped, the sandbox's arrives.
	if err := peer.Do(func() error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(peer.HostIP, uint16(dnsPort)).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("peer"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := h.a.Do(func() error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(h.a.HostIP, 53).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("sandbox"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	got := h.dnsFor(time.Second)
	if want := fmt.Sprintf("%s %d", h.a.SandboxIP, len("sandbox")); len(got) != 1 || got[0] != want {
		t.Errorf("DNS listener got %q, want only %q", got, want)
	}
	// Local processes reach the proxy over loopback.
	c, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", proxyPort), time.Second)
	if err != nil {
		t.Fatalf("loopback dial: %v", err)
	}
	c.Close()
	expectAccepted("loopback", netip.MustParseAddr("127.0.0.1"))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// The metadata guard is exercised in a fresh network namespace of the
// test's own: its tables are installed there and the metadata addresses
// are assigned to a veth pair inside it. That namespace has no route
// anywhere else, so no packet can leave it, let alone reach a real
// metadata service.
func TestMetadataGuardDropsOnlyTheProxysSockets(t *testing.T) {
	const proxyUID, otherUID = 4242, 4343
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread unless the thread is back where it came from.
		origin, err := vnetns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer origin.Close()
		ns, err := vnetns.New()
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		errc <- metadataGuardIn(t, ns, proxyUID, otherUID)
		if err := vnetns.Set(origin); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// metadataGuardIn runs on a thread locked into ns.
func metadataGuardIn(t *testing.T, ns vnetns.NsHandle, proxyUID, otherUID int) error {
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := nl.LinkSetUp(lo); err != nil {
		return err
	}
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mdtest0"}, PeerName: "mdtest1"}); err != nil {
		return fmt.Errorf("veth: %w", err)
	}
	veth, err := nl.LinkByName("mdtest0")
	if err != nil {
		return err
	}
	peer, err := nl.LinkByName("mdtest1")
	if err != nil {
		return err
	}
	ordinary := netip.MustParseAddr("10.99.0.1")
	addrs := append([]netip.Addr{ordinary}, netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("169.254.1.2"),
		netip.MustParseAddr("168.63.129.16"), netip.MustParseAddr("100.100.100.200"), netip.MustParseAddr("fd00:ec2::254"))
	for _, a := range addrs {
		bits := 32
		if a.Is6() {
			bits = 128
		}
		if err := nl.AddrAdd(veth, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("add %s: %w", a, err)
		}
	}
	for _, l := range []netlink.Link{veth, peer} {
		if err := nl.LinkSetUp(l); err != nil {
			return err
		}
	}
	// Listening on each address proves it is local to this namespace.
	for _, a := range addrs {
		for _, port := range []uint16{80, 53} {
			l, err := net.Listen("tcp", netip.AddrPortFrom(a, port).String())
			if err != nil {
				return fmt.Errorf("listen on %s: %w", a, err)
			}
			defer l.Close()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		}
	}

	cfg := Config{Table: testTable, IfPrefix: "sf", ProxyPort: 15001, DNSPort: 15053, ProxyUID: uint32(proxyUID)}
	if err := install(cfg, nftables.WithNetNSFd(int(ns))); err != nil {
		return err
	}
	defer func() {
		if err := remove(testTable, nftables.WithNetNSFd(int(ns))); err != nil {
			t.Error(err)
		}
	}()

	// dialAs opens the socket with fsuid uid: the owner meta skuid sees.
	// Setfsuid is per thread and this thread is locked.
	dialAs := func(uid int, dst netip.AddrPort) error {
		if err := unix.Setfsuid(uid); err != nil {
			return err
		}
		defer unix.Setfsuid(0)
		c, err := net.DialTimeout("tcp", dst.String(), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}
	for _, a := range addrs[1:] {
		dst := netip.AddrPortFrom(a, 80)
		// An output drop leaves the SYN unanswered (or, on some
		// kernels, fails connect with EPERM).
		if err := dialAs(proxyUID, dst); err == nil || (!isTimeout(err) && !errors.Is(err, syscall.EPERM)) {
			t.Errorf("proxy uid -> %s: %v, want dropped at output", dst, err)
		}
		if err := dialAs(otherUID, dst); err != nil {
			t.Errorf("other uid -> %s: %v, want connected", dst, err)
		}
		if err := dialAs(proxyUID, netip.AddrPortFrom(a, 53)); err != nil {
			t.Errorf("proxy uid -> %s:53 (DNS): %v, want connected", a, err)
		}
	}
	if err := dialAs(proxyUID, netip.AddrPortFrom(ordinary, 80)); err != nil {
		t.Errorf("proxy uid -> %s:80: %v, want connected", ordinary, err)
	}
	return nil
}
