//go:build integration

package firewall

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/sandpit-run/sandpit/services/executor/internal/netns"
)

// These tests build real namespaces, veths and nftables tables. Every
// address they send to belongs to a namespace or veth the test created.

const testTable = "sandpit_test"

type harness struct {
	proxy    net.Listener
	dns      net.PacketConn
	dnsTCP   net.Listener // the DNS port over TCP, as the proxy has it
	a, b     *netns.Sandbox
	accepted chan acceptInfo
	dnsGot   chan string

	mu sync.Mutex
	// dnsFrom counts the DNS datagrams received from each address.
	dnsFrom map[netip.Addr]int
}

// dnsFor collects what the DNS listener reports ("source bytes") for d.
func (h *harness) dnsFor(d time.Duration) []string {
	var got []string
	timeout := time.After(d)
	for {
		select {
		case s := <-h.dnsGot:
			got = append(got, s)
		case <-timeout:
			return got
		}
	}
}

func (h *harness) dnsReceived(from netip.Addr) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dnsFrom[from]
}

type acceptInfo struct {
	src, origDst netip.AddrPort
}

func setup(t *testing.T) *harness {
	t.Helper()
	h := &harness{accepted: make(chan acceptInfo, 16), dnsGot: make(chan string, 16), dnsFrom: map[netip.Addr]int{}}
	var err error
	h.proxy, err = net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.proxy.Close() })
	h.dnsTCP, h.dns = listenDNS(t)
	go func() {
		for {
			c, err := h.proxy.Accept()
			if err != nil {
				return
			}
			dst, _ := originalDst(c.(*net.TCPConn))
			h.accepted <- acceptInfo{src: c.RemoteAddr().(*net.TCPAddr).AddrPort(), origDst: dst}
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := h.dns.ReadFrom(buf)
			if err != nil {
				return
			}
			src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
			h.mu.Lock()
			h.dnsFrom[src]++
			h.mu.Unlock()
			select {
			case h.dnsGot <- fmt.Sprintf("%s %d", src, n):
			default:
			}
		}
	}()
	cfg := Config{
		Table:     testTable,
		IfPrefix:  "sf",
		ProxyPort: uint16(h.proxy.Addr().(*net.TCPAddr).Port),
		DNSPort:   uint16(h.dns.LocalAddr().(*net.UDPAddr).Port),
	}
	if err := Install(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Remove(testTable); err != nil {
			t.Error(err)
		}
	})
	// A pool far from anything real, and from the executor's default.
	m, err := netns.NewManager(netip.MustParsePrefix("10.251.0.0/24"), "sf", "spfwtest-")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []**netns.Sandbox{&h.a, &h.b} {
		sb, err := m.Create(fmt.Sprintf("fwtest%d%d", time.Now().UnixNano()%100000, len(t.Name())))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := m.Delete(sb); err != nil {
				t.Error(err)
			}
		})
		*p = sb
	}
	return h
}

// listenDNS listens on one port for UDP and TCP, as the proxy's DNS does.
func listenDNS(t *testing.T) (net.Listener, net.PacketConn) {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp4", l.Addr().String())
		if err != nil {
			l.Close()
			continue
		}
		t.Cleanup(func() { l.Close(); pc.Close() })
		return l, pc
	}
	t.Fatal("no port free for both TCP and UDP")
	return nil, nil
}

// originalDst reads SO_ORIGINAL_DST (IPv4) from a redirected connection.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var ap netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		// sockaddr_in fits in the 16 bytes of an IPv6Mreq's first fields.
		m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, 80)
		if err != nil {
			serr = err
			return
		}
		port := binary.BigEndian.Uint16(m.Multiaddr[2:4])
		ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Multiaddr[4:8])), port)
	})
	if err != nil {
		return ap, err
	}
	return ap, serr
}

func TestTCPFromSandboxIsRedirectedToProxy(t *testing.T) {
	h := setup(t)
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(h.a.HostIP, 443),   // its gateway
		netip.AddrPortFrom(h.b.SandboxIP, 80), // another sandbox
		netip.AddrPortFrom(h.a.HostIP, 22),    // any host port
	} {
		err := h.a.Do(func() error {
			c, err := net.DialTimeout("tcp4", dst.String(), 2*time.Second)
			if err != nil {
				return err
			}
			return c.Close()
		})
		if err != nil {
			t.Fatalf("dial %s from sandbox: %v", dst, err)
		}
		select {
		case got := <-h.accepted:
			if got.src.Addr() != h.a.SandboxIP || got.origDst != dst {
				t.Errorf("proxy saw %v from %v, want original destination %v from %v", got.origDst, got.src, dst, h.a.SandboxIP)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("connection to %s did not reach the proxy", dst)
		}
	}
}

func TestDNSIsRedirectedOtherUDPDropped(t *testing.T) {
	h := setup(t)
	// A UDP listener in sandbox b: a datagram from a to it must not arrive.
	bGot := make(chan struct{}, 1)
	var bConn net.PacketConn
	if err := h.b.Do(func() error {
		var err error
		bConn, err = net.ListenPacket("udp4", netip.AddrPortFrom(h.b.SandboxIP, 5353).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer bConn.Close()
	go func() {
		buf := make([]byte, 64)
		if _, _, err := bConn.ReadFrom(buf); err == nil {
			bGot <- struct{}{}
		}
	}()

	err := h.a.Do(func() error {
		for _, dst := range []string{
			netip.AddrPortFrom(h.a.HostIP, 53).String(),    // DNS: to the proxy
			netip.AddrPortFrom(h.b.SandboxIP, 53).String(), // "outside resolver": to the proxy too
			netip.AddrPortFrom(h.b.SandboxIP, 5353).String(),
			netip.AddrPortFrom(h.a.HostIP, 123).String(),
		} {
			c, err := net.Dial("udp4", dst)
			if err != nil {
				return err
			}
			_, _ = c.Write([]byte("sandpit"))
			c.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got := h.dnsFor(time.Second)
	if len(got) != 2 || !strings.HasPrefix(got[0], h.a.SandboxIP.String()) {
		t.Errorf("DNS listener got %v, want two datagrams from %v", got, h.a.SandboxIP)
	}
	select {
	case <-bGot:
		t.Error("a UDP datagram reached another sandbox")
	default:
	}
}

func TestSandboxHasNoIPv6(t *testing.T) {
	h := setup(t)
	err := h.a.Do(func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, i := range ifs {
			addrs, _ := i.Addrs()
			for _, a := range addrs {
				if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is6() {
					return fmt.Errorf("interface %s has IPv6 address %s", i.Name, a)
				}
			}
		}
		c, err := net.DialTimeout("tcp6", "[::1]:80", time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("IPv6 loopback connect succeeded")
		}
		if !strings.Contains(err.Error(), "cannot assign") && !isErrno(err, syscall.EADDRNOTAVAIL, syscall.ENETUNREACH, syscall.ECONNREFUSED, syscall.EAFNOSUPPORT) {
			return fmt.Errorf("unexpected IPv6 error: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func isErrno(err error, errs ...syscall.Errno) bool {
	for _, e := range errs {
		if strings.Contains(err.Error(), e.Error()) {
			return true
		}
	}
	return false
}

// TestDNSFloodIsDroppedPerSandbox: sandbox a sends 20,000 DNS datagrams as
// fast as it can while b sends 20, one every 10 ms. Past
// DefaultDNSPacketRate a second (after a burst of DNSPacketBurst) a's are dropped
// in the kernel, before the proxy's socket, and every one of b's arrives.
func TestDNSFloodIsDroppedPerSandbox(t *testing.T) {
	h := setup(t)
	const flood, polite = 20000, 20
	send := func(sb *netns.Sandbox, n int, pause time.Duration) (time.Duration, error) {
		start := time.Now()
		err := sb.Do(func() error {
			c, err := net.Dial("udp4", netip.AddrPortFrom(sb.HostIP, 53).String())
			if err != nil {
				return err
			}
			defer c.Close()
			for range n {
				// A full socket buffer is not the firewall's doing.
				_, _ = c.Write([]byte("sandpit dns flood"))
				time.Sleep(pause)
			}
			return nil
		})
		return time.Since(start), err
	}
	var wg sync.WaitGroup
	var floodTook time.Duration
	var floodErr error
	wg.Go(func() { floodTook, floodErr = send(h.a, flood, 0) })
	politeTook, err := send(h.b, polite, 10*time.Millisecond)
	wg.Wait()
	if err != nil || floodErr != nil {
		t.Fatal(err, floodErr)
	}
	time.Sleep(200 * time.Millisecond)
	gotA, gotB := h.dnsReceived(h.a.SandboxIP), h.dnsReceived(h.b.SandboxIP)
	// At most the burst plus the rate over the time the flood took (and
	// the wait after it), with a little room for the limiter's rounding.
	most := int(DNSPacketBurst + DefaultDNSPacketRate*(floodTook+200*time.Millisecond).Seconds()*1.1 + 10)
	t.Logf("flood: %d sent in %v, %d received (at most %d); polite: %d sent in %v, %d received", flood, floodTook, gotA, most, polite, politeTook, gotB)
	if gotA > most || gotA < DNSPacketBurst {
		t.Errorf("the flooding sandbox got %d of %d datagrams through, want between %d and %d", gotA, flood, DNSPacketBurst, most)
	}
	if gotB != polite {
		t.Errorf("the neighbour got %d of %d datagrams through, want all", gotB, polite)
	}

	// The address's next sandbox starts afresh once its entry is
	// forgotten, as the executor does when a sandbox's network goes.
	if got := meterEntries(t); !slices.Contains(got, h.a.SandboxIP) || !slices.Contains(got, h.b.SandboxIP) {
		t.Fatalf("meter entries %v, want both sandboxes", got)
	}
	if err := ForgetDNSMeter(testTable, h.a.SandboxIP); err != nil {
		t.Fatal(err)
	}
	if err := ForgetDNSMeter(testTable, h.a.HostIP); err != nil {
		t.Errorf("forgetting an address without an entry: %v", err)
	}
	if got := meterEntries(t); slices.Contains(got, h.a.SandboxIP) || !slices.Contains(got, h.b.SandboxIP) {
		t.Errorf("meter entries after forgetting %v: %v, want only %v", h.a.SandboxIP, got, h.b.SandboxIP)
	}
}

// meterEntries lists the addresses in the DNS flood meter.
func meterEntries(t *testing.T) []netip.Addr {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	set, err := c.GetSetByName(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: testTable}, dnsFloodSet)
	if err != nil {
		t.Fatal(err)
	}
	els, err := c.GetSetElements(set)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, e := range els {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			out = append(out, a)
		}
	}
	return out
}
