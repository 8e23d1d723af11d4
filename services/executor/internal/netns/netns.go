// Package netns gives each sandbox its own network namespace: loopback plus
// one veth to the host, a /30 from the executor's pool, a default route via
// the host end, and IPv6 disabled. It works through netlink, not `ip`.
package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sandpit-run/sandpit/services/executor/internal/ring"
)

// Host interfaces are an interface prefix plus the subnet index in hex;
// namespaces are a name prefix plus the execution id.
const (
	DefaultNamePrefix = "sandpit-"
	// sandboxIf is the sandbox end's name inside its namespace.
	sandboxIf = "eth0"
)

// netnsDir is where named namespaces are bind-mounted (iproute2's place, so
// `ip netns` shows them to an operator).
const netnsDir = "/run/netns"

// ErrPoolExhausted is returned when every subnet of the pool is in use.
var ErrPoolExhausted = errors.New("netns: address pool exhausted")

// Manager allocates subnets and creates and removes namespaces.
type Manager struct {
	pool       netip.Prefix
	size       int // number of /30 subnets in the pool
	ifPrefix   string
	namePrefix string
	subnets    *ring.Ring
}

// NewManager returns a Manager handing out /30s from pool (IPv4, /8 to
// /29), naming host interfaces ifPrefix+index and namespaces
// namePrefix+id. It owns every interface and namespace with those prefixes.
func NewManager(pool netip.Prefix, ifPrefix, namePrefix string) (*Manager, error) {
	pool = pool.Masked()
	if !pool.Addr().Is4() || pool.Bits() > 29 || pool.Bits() < 8 {
		return nil, fmt.Errorf("netns: pool %s must be an IPv4 prefix from /8 to /29", pool)
	}
	// The index of a /8's last /30 is 6 hex digits; interface names have
	// at most 15 bytes.
	if ifPrefix == "" || len(ifPrefix) > 8 || namePrefix == "" {
		return nil, fmt.Errorf("netns: interface prefix %q must have 1 to 8 bytes and the name prefix must be set", ifPrefix)
	}
	size := 1 << (30 - pool.Bits())
	return &Manager{pool: pool, size: size, ifPrefix: ifPrefix, namePrefix: namePrefix, subnets: ring.New(size)}, nil
}

// IfPrefix is the prefix of the host ends of the manager's veths.
func (m *Manager) IfPrefix() string { return m.ifPrefix }

// Sandbox is one namespace and its addresses.
type Sandbox struct {
	// Name is the namespace's name under /run/netns when Create made it,
	// empty otherwise; Path is the namespace Connect wired.
	Name, Path string
	// HostIf is the host end of the veth.
	HostIf string
	// HostIP is the host end's address: the sandbox's gateway and DNS
	// server. SandboxIP is the sandbox end's.
	HostIP, SandboxIP netip.Addr
	index             int
}

func (m *Manager) subnet(i int) (host, sandbox netip.Addr) {
	base := m.pool.Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i) * 4
	a := func(x uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
	}
	return a(v + 1), a(v + 2)
}

// Reserve allocates a sandbox's subnet and host interface name; Connect
// then wires a namespace to them. Delete frees what Reserve took.
func (m *Manager) Reserve() (*Sandbox, error) {
	idx, ok := m.subnets.Take()
	if !ok {
		return nil, ErrPoolExhausted
	}
	hostIP, sandboxIP := m.subnet(idx)
	return &Sandbox{
		HostIf:    fmt.Sprintf("%s%x", m.ifPrefix, idx),
		HostIP:    hostIP,
		SandboxIP: sandboxIP,
		index:     idx,
	}, nil
}

// Create reserves execution id's subnet and connects a namespace of its
// own, bind-mounted under /run/netns, to it (for tests and tools that need
// a namespace with no sandbox in it). On error nothing is left.
func (m *Manager) Create(id string) (sb *Sandbox, err error) {
	sb, err = m.Reserve()
	if err != nil {
		return nil, err
	}
	sb.Name = m.namePrefix + id
	defer func() {
		if err != nil {
			_ = m.Delete(sb)
			sb = nil
		}
	}()
	ns, err := newNamed(sb.Name)
	if err != nil {
		return sb, err
	}
	ns.Close()
	return sb, m.Connect(sb, filepath.Join(netnsDir, sb.Name))
}

// Connect wires the namespace at path (a bind mount, or a sandbox's
// /proc/PID/ns/net) to sb: a veth whose host end gets sb's host address
// and whose other end, eth0 in the namespace, the sandbox address and the
// default route; loopback up; IPv6 off. It returns once the veth carries
// packets. A namespace a sandbox's runtime created belongs to the
// sandbox's user namespace, which is what lets the runtime mount a sysfs
// for it; the executor, root on the host, may still configure it. On
// error the caller's Delete removes what was made.
func (m *Manager) Connect(sb *Sandbox, path string) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	sb.Path = path
	hostIP, sandboxIP := sb.HostIP, sb.SandboxIP

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: sb.HostIf},
		PeerName:      sandboxIf,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", sb.HostIf, err)
	}
	host, err := netlink.LinkByName(sb.HostIf)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", sb.HostIf, err)
	}
	if err := disableIPv6(sb.HostIf); err != nil {
		return err
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipNet(hostIP, 30)}); err != nil {
		return fmt.Errorf("address %s: %w", sb.HostIf, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("up %s: %w", sb.HostIf, err)
	}

	err = inNamespace(ns, func() error {
		if err := disableIPv6("all"); err != nil {
			return err
		}
		if err := disableIPv6("default"); err != nil {
			return err
		}
		h, err := netlink.NewHandleAt(ns)
		if err != nil {
			return fmt.Errorf("netlink handle: %w", err)
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("up lo: %w", err)
		}
		eth, err := h.LinkByName(sandboxIf)
		if err != nil {
			return fmt.Errorf("find %s: %w", sandboxIf, err)
		}
		if err := disableIPv6(sandboxIf); err != nil {
			return err
		}
		if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(sandboxIP, 30)}); err != nil {
			return fmt.Errorf("address %s: %w", sandboxIf, err)
		}
		if err := h.LinkSetUp(eth); err != nil {
			return fmt.Errorf("up %s: %w", sandboxIf, err)
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: hostIP.AsSlice()}); err != nil {
			return fmt.Errorf("default route: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return waitUp(sb.HostIf)
}

// waitUp waits until the veth carries packets: datagrams sent before that
// are lost, and the program's first DNS query with them.
func waitUp(name string) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not up after 2s (state %s)", name, l.Attrs().OperState)
		}
		time.Sleep(time.Millisecond)
	}
}

// Delete removes the sandbox's veth (and its namespace, if Create made
// it) and frees its subnet. What is already gone is not an error: a
// sandbox's own namespace, and the veth with it, go when its last process
// dies. The address's connection tracking stays: the next sandbox given
// it is redirected to the same proxy port, and conntrack takes up a new
// connection over an old entry when the proxy answers its SYN (see
// forgetFlows for when it cannot).
func (m *Manager) Delete(sb *Sandbox) error {
	var errs []error
	if l, err := netlink.LinkByName(sb.HostIf); err == nil {
		if _, err := deleteLink(l); err != nil {
			errs = append(errs, err)
		}
	}
	if sb.Name != "" {
		if err := removeNamed(filepath.Join(netnsDir, sb.Name)); err != nil {
			errs = append(errs, err)
		}
	}
	m.subnets.Free(sb.index)
	return errors.Join(errs...)
}

// forgetFlows deletes the connection tracking of every flow from or to an
// address in p, and returns how many it deleted. An entry outlives its
// executor (one that only the proxy's side reset stays 10 s, one never
// closed for days), and conntrack does not reopen every entry for a new
// connection with the same addresses and ports (not that reset one): the
// new connection goes where the entry's redirect did. Were the proxy port
// another since, the kernel would refuse it there.
func forgetFlows(p netip.Prefix) (uint, error) {
	var filters []netlink.CustomConntrackFilter
	for _, tp := range []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackOrigDstIP} {
		f := &netlink.ConntrackFilter{}
		if err := f.AddIPNet(tp, ipNet(p.Addr(), p.Bits())); err != nil {
			return 0, err
		}
		filters = append(filters, f)
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...)
	if err != nil {
		return n, fmt.Errorf("forget the flows of %s: %w", p, err)
	}
	return n, nil
}

// Sweep removes every namespace and host veth with the manager's prefixes,
// left by a previous executor, and the connection tracking of the pool's
// addresses. It must run before any Create.
func (m *Manager) Sweep() (namespaces, links int, err error) {
	var errs []error
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), m.namePrefix) {
			continue
		}
		if err := removeNamed(filepath.Join(netnsDir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		namespaces++
	}
	all, err := listLinks()
	if err != nil {
		return namespaces, links, fmt.Errorf("list links: %w", err)
	}
	for _, l := range all {
		if _, ok := l.(*netlink.Veth); !ok || !strings.HasPrefix(l.Attrs().Name, m.ifPrefix) {
			continue
		}
		deleted, err := deleteLink(l)
		if err != nil {
			errs = append(errs, err)
		}
		if deleted {
			links++
		}
	}
	// A previous executor's flows may have been redirected to another
	// proxy port.
	if _, err := forgetFlows(m.pool); err != nil {
		errs = append(errs, err)
	}
	return namespaces, links, errors.Join(errs...)
}

// listLinks lists the host's links. The kernel interrupts a dump when
// links come and go meanwhile, as the veths of the namespaces Sweep just
// unmounted do; the dump is then taken again.
func listLinks() ([]netlink.Link, error) {
	for attempt := 1; ; attempt++ {
		all, err := netlink.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == 10 {
			return all, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// deleteLink deletes l and reports whether it did. A link already gone is
// not an error: the host end of a veth goes with its peer when the
// sandbox's namespace is destroyed, which the kernel does on its own time
// once the namespace is unmounted and its last process is dead (Sweep
// unmounts the namespaces before it deletes the veths it listed).
func deleteLink(l netlink.Link) (bool, error) {
	err := netlink.LinkDel(l)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENODEV):
		return false, nil
	default:
		return false, fmt.Errorf("delete %s: %w", l.Attrs().Name, err)
	}
}

// newNamed creates a namespace bind-mounted at netnsDir/name. netns.NewNamed
// switches the calling thread into the new namespace, so it runs on a locked
// thread that is switched back.
func newNamed(name string) (netns.NsHandle, error) {
	if err := shareNetnsDir(); err != nil {
		return 0, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	origin, err := netns.Get()
	if err != nil {
		return 0, fmt.Errorf("current netns: %w", err)
	}
	defer origin.Close()
	ns, err := netns.NewNamed(name)
	if restoreErr := netns.Set(origin); restoreErr != nil {
		// The thread is in the wrong namespace; never hand it back to Go.
		runtime.Goexit()
	}
	if err != nil {
		return 0, fmt.Errorf("create netns %s: %w", name, err)
	}
	return ns, nil
}

var netnsDirShared struct {
	sync.Mutex
	done bool
}

// shareNetnsDir makes netnsDir a mount point with shared propagation before
// the first namespace is mounted in it, as `ip netns add` does. iproute2
// bind-mounts the directory onto itself when it is not a mount point yet;
// a namespace mounted there before would then be hidden under the new
// mount, where it can be neither unmounted nor removed (EBUSY), and leak.
// With the directory already a mount point, iproute2 only marks it shared
// again. Done once per process; a failure is retried at the next call.
func shareNetnsDir() error {
	netnsDirShared.Lock()
	defer netnsDirShared.Unlock()
	if netnsDirShared.done {
		return nil
	}
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", netnsDir, err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s onto itself: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", netnsDir, err)
	}
	netnsDirShared.done = true
	return nil
}

func removeNamed(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// inNamespace runs fn on a locked thread inside ns.
func inNamespace(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: if switching back fails the thread dies with
		// the goroutine instead of serving others in the wrong namespace.
		origin, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer origin.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		errc <- fn()
		if err := netns.Set(origin); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

// disableIPv6 turns IPv6 off on an interface (or "all"/"default") of the
// calling thread's namespace.
func disableIPv6(iface string) error {
	p := filepath.Join("/proc/sys/net/ipv6/conf", iface, "disable_ipv6")
	if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // IPv6 is not built into this kernel
		}
		return fmt.Errorf("disable IPv6 on %s: %w", iface, err)
	}
	return nil
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}
