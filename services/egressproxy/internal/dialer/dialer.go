package dialer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Resolver looks names up; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Config says how upstreams are reached.
type Config struct {
	// Resolver resolves upstream names; nil means net.DefaultResolver.
	Resolver Resolver
	// Overrides send a host (canonical name) to a fixed address:port
	// instead of resolving it. They are the operator's explicit choice, so
	// the special-address refusal does not apply to them; Allow does.
	Overrides map[string]string
	// Allow, when not empty, is the only set of addresses ever dialed,
	// checked on the final address in the socket's Control hook, after
	// resolution and overrides.
	Allow []netip.Prefix
	// AllowSpecial reports whether host may resolve to special-purpose
	// addresses (an internal API the operator allowed by name).
	AllowSpecial func(host string) bool
	// Timeout bounds each connect; zero means 10s.
	Timeout time.Duration
	// HostAddrs lists this host's own addresses, refused like the
	// special-purpose ones (a public address of the host reaches its own
	// services); nil reads every interface's (net.InterfaceAddrs).
	HostAddrs func() ([]netip.Addr, error)
	// HostAddrsRefresh is how old the list may grow before a dial reads it
	// again; zero means DefaultHostAddrsRefresh.
	HostAddrsRefresh time.Duration
}

// DefaultHostAddrsRefresh bounds how long an address added to one of the
// host's interfaces stays dialable.
const DefaultHostAddrsRefresh = 30 * time.Second

// Dialer dials upstreams for an http.Transport.
type Dialer struct {
	cfg Config
	nd  net.Dialer
	now func() time.Time

	mu     sync.Mutex
	own    map[netip.Addr]bool
	readAt time.Time
}

// ErrRefused is wrapped by errors for addresses the dialer will not dial.
var ErrRefused = errors.New("upstream address refused")

// ErrNotResolved is wrapped by errors for names that did not resolve.
var ErrNotResolved = errors.New("upstream name not resolved")

// New returns a Dialer.
func New(cfg Config) *Dialer {
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.HostAddrs == nil {
		cfg.HostAddrs = interfaceAddrs
	}
	if cfg.HostAddrsRefresh == 0 {
		cfg.HostAddrsRefresh = DefaultHostAddrsRefresh
	}
	d := &Dialer{cfg: cfg, now: time.Now}
	d.nd = net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second, Control: d.control}
	d.isHost(netip.Addr{}) // read them at start
	return d
}

// interfaceAddrs is every address on the host's interfaces.
func interfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out, nil
}

// isHost reports whether ip is one of the host's own addresses, reading
// them again once they are HostAddrsRefresh old. A failed read keeps the
// previous list and is retried on the next call.
func (d *Dialer) isHost(ip netip.Addr) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now := d.now(); d.own == nil || now.Sub(d.readAt) >= d.cfg.HostAddrsRefresh {
		if addrs, err := d.cfg.HostAddrs(); err == nil {
			d.own = make(map[netip.Addr]bool, len(addrs))
			for _, a := range addrs {
				d.own[a.Unmap().WithZone("")] = true
			}
			d.readAt = now
		}
	}
	return d.own[ip.Unmap().WithZone("")]
}

// control runs on every socket before connect: the last line of defence,
// whatever path led to the address.
func (d *Dialer) control(network, address string, _ syscall.RawConn) error {
	if len(d.cfg.Allow) == 0 {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse %q", ErrRefused, address)
	}
	ip := ap.Addr().Unmap()
	for _, p := range d.cfg.Allow {
		if p.Contains(ip) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s is outside --upstream-allow", ErrRefused, ip)
}

// DialContext dials addr ("host:port", host canonical) for network "tcp".
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if to, ok := d.cfg.Overrides[strings.ToLower(host)]; ok {
		return d.nd.DialContext(ctx, "tcp", to)
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil || pn == 0 {
		return nil, fmt.Errorf("dial %s: bad port", addr)
	}
	addrs, err := d.Resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, ip := range addrs {
		c, err := d.nd.DialContext(ctx, "tcp", netip.AddrPortFrom(ip, uint16(pn)).String())
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("dial %s: %w", addr, errors.Join(errs...))
}

// Resolve looks host up once and returns its addresses, IPv4 first, after
// refusing the whole answer if any address is special-purpose (a name that
// mixes public and private answers is a rebinding attempt, not a mirror).
func (d *Dialer) Resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		addrs, err = d.cfg.Resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("%w: resolve %s: %w", ErrNotResolved, host, err)
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("%w: resolve %s: no addresses", ErrNotResolved, host)
		}
	}
	allowSpecial := d.cfg.AllowSpecial != nil && d.cfg.AllowSpecial(host)
	v4 := make([]netip.Addr, 0, len(addrs))
	var v6 []netip.Addr
	for _, ip := range addrs {
		why := Classify(ip)
		if why == "" && d.isHost(ip) {
			why = "this host's own address"
		}
		if why != "" && !allowSpecial {
			return nil, fmt.Errorf("%w: %s resolves to %s (%s)", ErrRefused, host, ip, why)
		}
		if ip.Unmap().Is4() {
			v4 = append(v4, ip.Unmap())
		} else {
			v6 = append(v6, ip)
		}
	}
	return append(v4, v6...), nil
}

// ParseOverride reads "host=addr:port".
func ParseOverride(s string) (host, addr string, err error) {
	host, addr, ok := strings.Cut(s, "=")
	if !ok || host == "" {
		return "", "", fmt.Errorf("upstream override %q: want host=addr:port", s)
	}
	if _, err := netip.ParseAddrPort(addr); err != nil {
		return "", "", fmt.Errorf("upstream override %q: %w", s, err)
	}
	return strings.ToLower(strings.TrimSuffix(host, ".")), addr, nil
}
