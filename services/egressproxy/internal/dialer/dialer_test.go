package dialer

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"testing"

	"github.com/sandpit-run/sandpit/services/policy/canon"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		in      string
		special bool
	}{
		{"8.8.8.8", false},
		{"1.1.1.1", false},
		{"151.101.1.69", false},
		{"2606:4700::1111", false},
		{"0.0.0.0", true},
		{"0.1.2.3", true},
		{"10.1.2.3", true},
		{"100.64.0.1", true},
		{"100.127.255.255", true},
		{"100.128.0.1", false},
		{"127.0.0.1", true},
		{"127.255.255.254", true},
		{"169.254.169.254", true},
		{"172.16.0.1", true},
		{"172.31.255.255", true},
		{"172.32.0.1", false},
		{"192.0.0.8", true},
		{"192.0.2.1", true},
		{"192.88.99.1", true},
		{"192.168.1.1", true},
		{"198.18.0.1", true},
		{"198.19.255.255", true},
		{"198.51.100.7", true},
		{"203.0.113.9", true},
		{"224.0.0.251", true},
		{"239.255.255.250", true},
		{"240.0.0.1", true},
		{"255.255.255.255", true},
		{"::", true},
		{"::1", true},
		{"::127.0.0.1", true},
		{"::8.8.8.8", true},
		{"::ffff:169.254.169.254", true},
		{"::ffff:127.0.0.1", true},
		{"::ffff:10.0.0.1", true},
		{"::ffff:8.8.8.8", false},
		{"64:ff9b::a9fe:a9fe", true},
		{"64:ff9b::808:808", false},
		{"64:ff9b:1::1", true},
		{"2002:a9fe:a9fe::1", true},
		{"2002:7f00:1::", true},
		{"2002:808:808::1", false},
		{"2001::1", true},
		{"2001:db8::1", true},
		{"3fff::1", true},
		{"fc00::1", true},
		{"fd12:3456::1", true},
		{"fe80::1", true},
		{"fec0::1", true},
		{"ff02::1", true},
		{"100::1", true},
		{"4000::1", true},
		{"fe80::1%eth0", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			why := Classify(netip.MustParseAddr(tt.in))
			if (why != "") != tt.special {
				t.Fatalf("Classify(%s) = %q, want special=%v", tt.in, why, tt.special)
			}
		})
	}
}

// TestClassifyAfterCanon checks the spellings a sandbox might use for the
// metadata address all end up refused once canon has parsed them.
func TestClassifyAfterCanon(t *testing.T) {
	for _, in := range []string{
		"169.254.169.254", "2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "025177524776",
		"169.254.43518", "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]",
		"[2002:a9fe:a9fe::]", "127.1", "0x7f000001", "0", "[::]", "１２７．０．０．１",
	} {
		h, err := canon.CanonicalHost(in)
		if err != nil {
			t.Fatalf("CanonicalHost(%q): %v", in, err)
		}
		if !h.IsIP() {
			t.Fatalf("%q not seen as an IP literal", in)
		}
		if why := Classify(h.IP); why == "" {
			t.Errorf("%q (%s) not refused", in, h.IP)
		}
	}
}

type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

var loopbackOnly = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

func TestResolveRefusesSpecial(t *testing.T) {
	res := fakeResolver{
		"metadata.test": {netip.MustParseAddr("169.254.169.254")},
		"mixed.test":    {netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("10.0.0.1")},
		"public.test":   {netip.MustParseAddr("2606:4700::1111"), netip.MustParseAddr("8.8.8.8")},
		"internal.test": {netip.MustParseAddr("10.0.0.1")},
	}
	d := New(Config{Resolver: res, Allow: loopbackOnly, AllowSpecial: func(h string) bool { return h == "internal.test" }})
	ctx := context.Background()
	for _, h := range []string{"metadata.test", "mixed.test", "169.254.169.254", "::1"} {
		if _, err := d.Resolve(ctx, h); !errors.Is(err, ErrRefused) {
			t.Errorf("Resolve(%s) = %v, want ErrRefused", h, err)
		}
	}
	got, err := d.Resolve(ctx, "public.test")
	if err != nil || got[0] != netip.MustParseAddr("8.8.8.8") {
		t.Errorf("Resolve(public.test) = %v, %v; want IPv4 first", got, err)
	}
	if _, err := d.Resolve(ctx, "internal.test"); err != nil {
		t.Errorf("Resolve(internal.test) = %v, want allowed by name", err)
	}
	if _, err := d.Resolve(ctx, "nx.test"); err == nil {
		t.Error("Resolve(nx.test) succeeded")
	}
}

func TestDialAllowlistAndOverride(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	ctx := context.Background()

	// Override to loopback: allowed (operator's choice) within the allowlist.
	d := New(Config{Overrides: map[string]string{"api.stripe.test": ln.Addr().String()}, Allow: loopbackOnly})
	c, err := d.DialContext(ctx, "tcp", "api.stripe.test:443")
	if err != nil {
		t.Fatalf("override dial: %v", err)
	}
	c.Close()

	// Override outside the allowlist: refused in Control, before connect.
	// The allowlist here is 127.0.0.2/32 so the refused target is still
	// loopback: nothing can leave the machine even if the check failed.
	d = New(Config{
		Overrides: map[string]string{"api.stripe.test": ln.Addr().String()},
		Allow:     []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
	})
	if _, err := d.DialContext(ctx, "tcp", "api.stripe.test:443"); !errors.Is(err, ErrRefused) {
		t.Fatalf("dial outside allowlist = %v, want ErrRefused", err)
	}

	// A resolved loopback address is special: refused without an override.
	d = New(Config{Resolver: fakeResolver{"local.test": {netip.MustParseAddr("127.0.0.1")}}, Allow: loopbackOnly})
	if _, err := d.DialContext(ctx, "tcp", net.JoinHostPort("local.test", itoa(port))); !errors.Is(err, ErrRefused) {
		t.Fatalf("dial loopback by name = %v, want ErrRefused", err)
	}
	// ... unless the operator allowed the name.
	d = New(Config{
		Resolver:     fakeResolver{"local.test": {netip.MustParseAddr("127.0.0.1")}},
		Allow:        loopbackOnly,
		AllowSpecial: func(h string) bool { return h == "local.test" },
	})
	c, err = d.DialContext(ctx, "tcp", net.JoinHostPort("local.test", itoa(port)))
	if err != nil {
		t.Fatalf("dial allowed special: %v", err)
	}
	c.Close()
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestParseOverride(t *testing.T) {
	h, a, err := ParseOverride("API.Stripe.test.=127.0.0.1:8443")
	if err != nil || h != "api.stripe.test" || a != "127.0.0.1:8443" {
		t.Fatalf("ParseOverride = %q %q %v", h, a, err)
	}
	for _, bad := range []string{"x", "=127.0.0.1:1", "h=localhost:1", "h=127.0.0.1"} {
		if _, _, err := ParseOverride(bad); err == nil {
			t.Errorf("ParseOverride(%q) succeeded", bad)
		}
	}
}
