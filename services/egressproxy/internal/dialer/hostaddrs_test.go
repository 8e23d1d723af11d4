package dialer

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestClassifyCloudMetadata(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"169.254.169.254", "cloud metadata"},
		{"168.63.129.16", "cloud metadata (Azure WireServer)"},
		{"100.100.100.200", "cloud metadata (Alibaba)"},
		{"fd00:ec2::254", "cloud metadata (AWS)"},
		{"::ffff:168.63.129.16", "IPv4-mapped cloud metadata (Azure WireServer)"},
		{"64:ff9b::a83f:8110", "NAT64 cloud metadata (Azure WireServer)"},
		{"2002:a83f:8110::1", "6to4 cloud metadata (Azure WireServer)"},
		{"::ffff:169.254.169.254", "IPv4-mapped cloud metadata"},
		{"169.254.169.253", "link-local"},
		{"fd00:ec2::253", "unique local"},
		{"100.100.100.201", "shared address space (CGNAT)"},
		// Its neighbours are ordinary public addresses.
		{"168.63.129.15", ""},
		{"168.63.129.17", ""},
	}
	for _, tt := range tests {
		if got := Classify(netip.MustParseAddr(tt.in)); got != tt.want {
			t.Errorf("Classify(%s) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestResolveRefusesMetadataUnlessNamed(t *testing.T) {
	res := fakeResolver{
		"wireserver.test": {netip.MustParseAddr("168.63.129.16")},
		"alibaba.test":    {netip.MustParseAddr("100.100.100.200")},
		"aws6.test":       {netip.MustParseAddr("fd00:ec2::254")},
		"allowed.test":    {netip.MustParseAddr("168.63.129.16")},
	}
	d := New(Config{Resolver: res, HostAddrs: noHostAddrs, AllowSpecial: func(h string) bool { return h == "allowed.test" }})
	for _, h := range []string{"wireserver.test", "alibaba.test", "aws6.test", "168.63.129.16", "fd00:ec2::254", "::ffff:100.100.100.200"} {
		_, err := d.Resolve(context.Background(), h)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "cloud metadata") {
			t.Errorf("Resolve(%s) = %v, want ErrRefused naming cloud metadata", h, err)
		}
	}
	if _, err := d.Resolve(context.Background(), "allowed.test"); err != nil {
		t.Errorf("Resolve(allowed.test) = %v, want allowed by name", err)
	}
}

func noHostAddrs() ([]netip.Addr, error) { return nil, nil }

func TestResolveRefusesHostAddrs(t *testing.T) {
	own := []netip.Addr{
		netip.MustParseAddr("93.184.216.34"),
		netip.MustParseAddr("2606:4700::6810:84e5"),
		netip.MustParseAddr("2a01:4f8::1%eth0"),
	}
	res := fakeResolver{
		"self.test":    {netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("93.184.216.34")},
		"self6.test":   {netip.MustParseAddr("2606:4700::6810:84e5")},
		"public.test":  {netip.MustParseAddr("8.8.8.8")},
		"allowed.test": {netip.MustParseAddr("93.184.216.34")},
	}
	d := New(Config{Resolver: res, HostAddrs: func() ([]netip.Addr, error) { return own, nil },
		AllowSpecial: func(h string) bool { return h == "allowed.test" }})
	tests := []struct {
		host    string
		refused bool
	}{
		{"self.test", true},
		{"self6.test", true},
		{"93.184.216.34", true},
		{"::ffff:93.184.216.34", true},
		{"2a01:4f8::1", true},
		{"public.test", false},
		{"allowed.test", false},
		{"93.184.216.35", false},
	}
	for _, tt := range tests {
		_, err := d.Resolve(context.Background(), tt.host)
		if tt.refused {
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "this host's own address") {
				t.Errorf("Resolve(%s) = %v, want refused as the host's own address", tt.host, err)
			}
		} else if err != nil {
			t.Errorf("Resolve(%s) = %v, want allowed", tt.host, err)
		}
	}
}

func TestHostAddrsRefresh(t *testing.T) {
	var (
		reads int
		list  []netip.Addr
		fail  error
	)
	a, b := netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("93.184.216.35")
	list = []netip.Addr{a}
	d := New(Config{HostAddrs: func() ([]netip.Addr, error) {
		reads++
		return list, fail
	}})
	if reads != 1 {
		t.Fatalf("%d reads at start, want 1", reads)
	}
	start := time.Now()
	clock := start
	d.now = func() time.Time { return clock }
	d.readAt = start
	refused := func(ip netip.Addr) bool {
		_, err := d.Resolve(context.Background(), ip.String())
		return errors.Is(err, ErrRefused)
	}

	list = []netip.Addr{b}
	clock = start.Add(DefaultHostAddrsRefresh - time.Second)
	if !refused(a) || refused(b) || reads != 1 {
		t.Errorf("before the refresh: a refused %v, b refused %v, %d reads; want the start's list", refused(a), refused(b), reads)
	}
	clock = start.Add(DefaultHostAddrsRefresh)
	if refused(a) || !refused(b) || reads != 2 {
		t.Errorf("after the refresh: a refused %v, b refused %v, %d reads; want the new list", refused(a), refused(b), reads)
	}
	// A failed read keeps the last list and is retried on the next dial.
	fail, list = errors.New("netlink: boom"), nil
	clock = start.Add(2 * DefaultHostAddrsRefresh)
	if !refused(b) || !refused(b) || reads != 4 {
		t.Errorf("failed reads: b refused %v, %d reads; want the last list kept and each dial retrying", refused(b), reads)
	}
}
