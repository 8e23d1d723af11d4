package canon

import (
	"errors"
	"strings"
	"testing"
)

func TestCanonicalHost(t *testing.T) {
	tests := []struct {
		in     string
		want   string
		wantIP bool
		err    bool
	}{
		{in: "api.stripe.com", want: "api.stripe.com"},
		{in: "API.Stripe.COM", want: "api.stripe.com"},
		{in: "api.stripe.com.", want: "api.stripe.com"},
		{in: "api.stripe.com..", err: true},
		{in: "", err: true},
		{in: ".", err: true},
		{in: "münchen.de", want: "xn--mnchen-3ya.de"},
		{in: "MÜNCHEN.DE", want: "xn--mnchen-3ya.de"},
		{in: "xn--mnchen-3ya.de", want: "xn--mnchen-3ya.de"},
		{in: "_dmarc.example.com", want: "_dmarc.example.com"},
		{in: "My_Bucket.s3.amazonaws.com.", want: "my_bucket.s3.amazonaws.com"},
		{in: "r3---sn-abc.googlevideo.com", want: "r3---sn-abc.googlevideo.com"},
		{in: "faß.de", want: "xn--fa-hia.de"},
		{in: "ｅｘａｍｐｌｅ.com", want: "example.com"},
		{in: "example。com", want: "example.com"},
		{in: "xn--zz.example", err: true},
		{in: "a!b.com", err: true},
		{in: "a*b.com", err: true},
		{in: "example.com:443", err: true},
		{in: "a-.com", err: true},
		{in: strings.Repeat("a.", 127) + "com", err: true},
		{in: "a..b", err: true},
		{in: "-a.com", err: true},
		{in: "a b.com", err: true},
		{in: "a/b.com", err: true},
		{in: "a%2eb.com", err: true},
		{in: "user@evil.com", err: true},
		{in: strings.Repeat("a", 64) + ".com", err: true},
		// IP literals in every spelling.
		{in: "169.254.169.254", want: "169.254.169.254", wantIP: true},
		{in: "2852039166", want: "169.254.169.254", wantIP: true},
		{in: "0xa9fea9fe", want: "169.254.169.254", wantIP: true},
		{in: "0XA9FEA9FE", want: "169.254.169.254", wantIP: true},
		{in: "025177524776", want: "169.254.169.254", wantIP: true},
		{in: "0251.0376.0251.0376", want: "169.254.169.254", wantIP: true},
		{in: "0xa9.0xfe.0xa9.0xfe", want: "169.254.169.254", wantIP: true},
		{in: "169.254.43518", want: "169.254.169.254", wantIP: true},
		{in: "169.16689662", want: "169.254.169.254", wantIP: true},
		{in: "127.1", want: "127.0.0.1", wantIP: true},
		{in: "127.0.0.1.", want: "127.0.0.1", wantIP: true},
		{in: "１２７．０．０．１", want: "127.0.0.1", wantIP: true},
		{in: "127。0。0。1", want: "127.0.0.1", wantIP: true},
		{in: "[::1]", want: "::1", wantIP: true},
		{in: "[::1.2.3.4]", want: "1.2.3.4", wantIP: true},
		{in: "[::ffff:169.254.169.254]", want: "169.254.169.254", wantIP: true},
		{in: "[::ffff:a9fe:a9fe]", want: "169.254.169.254", wantIP: true},
		{in: "[::FFFF:A9FE:A9FE]", want: "169.254.169.254", wantIP: true},
		{in: "[0:0:0:0:0:ffff:169.254.169.254]", want: "169.254.169.254", wantIP: true},
		{in: "::ffff:1.2.3.4", want: "1.2.3.4", wantIP: true},
		{in: "[::0102:0304]", want: "1.2.3.4", wantIP: true},
		{in: "[64:ff9b::1.2.3.4]", want: "1.2.3.4", wantIP: true},
		{in: "[64:ff9b::a9fe:a9fe]", want: "169.254.169.254", wantIP: true},
		{in: "[2002:a9fe:a9fe::]", want: "169.254.169.254", wantIP: true},
		{in: "[2002:0102:0304:1::5]", want: "1.2.3.4", wantIP: true},
		{in: "[::]", want: "::", wantIP: true},
		{in: "[::1]", want: "::1", wantIP: true},
		{in: "[::2]", want: "0.0.0.2", wantIP: true},
		{in: "::1", want: "::1", wantIP: true},
		{in: "[64:ff9b:1::a9fe:a9fe]", want: "64:ff9b:1::a9fe:a9fe", wantIP: true},
		{in: "[2001:DB8::0001]", want: "2001:db8::1", wantIP: true},
		{in: "[::ffff:1.2.3.4]:443", err: true},
		{in: "[::ffff:1.2.3]", err: true},
		{in: "[fe80::1%25eth0]", err: true},
		{in: "[127.0.0.1]", err: true},
		{in: "[::1", err: true},
		{in: "256.0.0.1", err: true},
		{in: "1.2.3.4.5", err: true},
		{in: "08.0.0.1", err: true},
		{in: "0x7f.1", want: "127.0.0.1", wantIP: true},
		{in: "2130706433", want: "127.0.0.1", wantIP: true},
		{in: "0177.0.0.1", want: "127.0.0.1", wantIP: true},
		{in: "010.0.0.1", want: "8.0.0.1", wantIP: true},
		{in: "1.2.3", want: "1.2.0.3", wantIP: true},
		{in: "0x", want: "0.0.0.0", wantIP: true},
		{in: "example.0x1f", err: true},
		{in: "4294967296", err: true},
		{in: "example.123", err: true},
		{in: "123.example", want: "123.example"},
		{in: "0x.example", want: "0x.example"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := CanonicalHost(tt.in)
			if tt.err {
				if err == nil {
					t.Fatalf("CanonicalHost(%q) = %+v, want error", tt.in, got)
				}
				if !errors.Is(err, ErrHost) {
					t.Fatalf("error %v does not wrap ErrHost", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("CanonicalHost(%q): %v", tt.in, err)
			}
			if got.Name != tt.want || got.IsIP() != tt.wantIP {
				t.Fatalf("CanonicalHost(%q) = %q ip=%v, want %q ip=%v", tt.in, got.Name, got.IsIP(), tt.want, tt.wantIP)
			}
		})
	}
}

func TestSplitHostPort(t *testing.T) {
	tests := []struct {
		in, host, port string
		err            bool
	}{
		{in: "api.stripe.com", host: "api.stripe.com"},
		{in: "API.stripe.com:443", host: "api.stripe.com", port: "443"},
		{in: "api.stripe.com.:8443", host: "api.stripe.com", port: "8443"},
		{in: "[::1]:443", host: "::1", port: "443"},
		{in: "[::1]", host: "::1"},
		{in: "api.stripe.com:", err: true},
		{in: "api.stripe.com:0", err: true},
		{in: "api.stripe.com:99999", err: true},
		{in: "api.stripe.com:http", err: true},
		{in: "a:b:c", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			h, port, err := SplitHostPort(tt.in)
			if tt.err != (err != nil) {
				t.Fatalf("SplitHostPort(%q) = %+v, %q, %v; want error %v", tt.in, h, port, err, tt.err)
			}
			if err == nil && (h.Name != tt.host || port != tt.port) {
				t.Fatalf("SplitHostPort(%q) = %q, %q; want %q, %q", tt.in, h.Name, port, tt.host, tt.port)
			}
		})
	}
}

func TestCanonicalTarget(t *testing.T) {
	tests := []struct {
		in, path, query string
		err             bool
	}{
		{in: "/", path: "/"},
		{in: "/v1/products", path: "/v1/products"},
		{in: "/v1/products?limit=3&starting_after=x", path: "/v1/products", query: "limit=3&starting_after=x"},
		{in: "/v1//products", path: "/v1/products"},
		{in: "//v1///products//", path: "/v1/products/"},
		{in: "/v1/./products", path: "/v1/products"},
		{in: "/v1/charges/../products", path: "/v1/products"},
		{in: "/v1/products/..", path: "/v1/"},
		{in: "/v1/products/.", path: "/v1/products/"},
		{in: "/../../etc/passwd", path: "/etc/passwd"},
		{in: "/%76%31/%70roducts", path: "/v1/products"},
		{in: "/v1/%7Euser/%2Dx%5F", path: "/v1/~user/-x_"},
		{in: "/v1/a%20b", path: "/v1/a%20b"},
		{in: "/v1/a%3fb", path: "/v1/a%3Fb"},
		{in: "/v1/caf%c3%a9", path: "/v1/caf%C3%A9"},
		{in: "/v1/file%2Etxt", path: "/v1/file.txt"},
		{in: "/v1/a b", path: "/v1/a%20b"},
		{in: "/v1/é", path: "/v1/%C3%A9"},
		{in: "/v1/x;y=1/:@!$&'()*+,=", path: "/v1/x;y=1/:@!$&'()*+,="},
		{in: "/v1/products?", path: "/v1/products"},
		{in: "/q?a=%2F%2e%2e", path: "/q", query: "a=%2F%2e%2e"},
		// Ambiguous: blocked.
		{in: "/v1/products%2F..%2Fcharges", err: true},
		{in: "/v1/products%2fx", err: true},
		{in: "/v1/products%5Cx", err: true},
		{in: "/v1\\products", err: true},
		{in: "/v1/a%00", err: true},
		{in: "/v1/%zz", err: true},
		{in: "/v1/%4", err: true},
		{in: "/v1/%", err: true},
		{in: "/v1/%2e%2e/charges", err: true},
		{in: "/v1/.%2e/charges", err: true},
		{in: "/v1/%2E/charges", err: true},
		{in: "/v1/..;/charges", err: true},
		{in: "/v1/.;x/charges", err: true},
		{in: "/v1/a\x00b", err: true},
		{in: "/v1/a\nb", err: true},
		{in: "/v1/a#frag", err: true},
		{in: "/q?a=%zz", err: true},
		{in: "/q?a=b c", err: true},
		{in: "*", err: true},
		{in: "", err: true},
		{in: "v1/products", err: true},
		{in: "https://api.stripe.com/v1", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			path, query, err := CanonicalTarget(tt.in)
			if tt.err {
				if err == nil {
					t.Fatalf("CanonicalTarget(%q) = %q, %q; want error", tt.in, path, query)
				}
				if !errors.Is(err, ErrAmbiguousPath) {
					t.Fatalf("error %v does not wrap ErrAmbiguousPath", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("CanonicalTarget(%q): %v", tt.in, err)
			}
			if path != tt.path || query != tt.query {
				t.Fatalf("CanonicalTarget(%q) = %q, %q; want %q, %q", tt.in, path, query, tt.path, tt.query)
			}
		})
	}
}

// FuzzCanonicalTarget checks that a normalized path is a fixed point, has
// no dot segments, repeated slashes or ambiguous bytes left, and that
// CheckPath accepts exactly the fixed points.
func FuzzCanonicalTarget(f *testing.F) {
	for _, s := range []string{"/", "/v1/products", "/a/../b", "/%2e%2e/", "/a//b?x=1", "/%41%2F", "/a/%C3%A9", "/..;/", "/a/%2Etxt", "/a%3f", "/a/./", "/%25"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		if CheckPath(in) == nil {
			if p, q, err := CanonicalTarget(in); err != nil || p != in || q != "" {
				t.Fatalf("CheckPath accepts %q, CanonicalTarget gives %q?%q, %v", in, p, q, err)
			}
		}
		path, query, err := CanonicalTarget(in)
		if err != nil {
			return
		}
		p2, q2, err := CanonicalTarget(path + "?" + query)
		if err != nil || p2 != path || q2 != query {
			t.Fatalf("not a fixed point: %q -> %q?%q -> %q?%q, %v", in, path, query, p2, q2, err)
		}
		if err := CheckPath(path); err != nil {
			t.Fatalf("CheckPath refuses %q (from %q): %v", path, in, err)
		}
		if !strings.HasPrefix(path, "/") || strings.Contains(path, "//") || strings.Contains(path, "\\") {
			t.Fatalf("%q -> %q", in, path)
		}
		for seg := range strings.SplitSeq(path, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q -> %q keeps a dot segment", in, path)
			}
		}
		for i := 0; i < len(path); i++ {
			if c := path[i]; c <= 0x20 || c >= 0x7f {
				t.Fatalf("%q -> %q holds raw byte %#x", in, path, c)
			}
		}
	})
}

// FuzzCanonicalHost checks that a canonical host is a fixed point and plain
// lowercase ASCII, that CheckHost accepts exactly the fixed points, and
// that its allocation-free path agrees with CanonicalHost.
func FuzzCanonicalHost(f *testing.F) {
	for _, s := range []string{
		"api.stripe.com", "2852039166", "[::1]", "münchen.de", "0x7f.1", "A.B.",
		"[::ffff:1.2.3.4]", "::ffff:1.2.3.4", "[::1.2.3.4]", "[64:ff9b::102:304]", "[2002:102:304::1]",
		"2001:db8::1", "1.2.3.4", "r3---sn-abc.x.com", "xn--mnchen-3ya.de", "a_b.c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		if isCanonicalHost(in) {
			if h, err := CanonicalHost(in); err != nil || h.Name != in {
				t.Fatalf("fast path accepts %q, CanonicalHost gives %+v, %v", in, h, err)
			}
		}
		if CheckHost(in) == nil {
			if h, err := CanonicalHost(in); err != nil || h.Name != in {
				t.Fatalf("CheckHost accepts %q, CanonicalHost gives %+v, %v", in, h, err)
			}
		}
		h, err := CanonicalHost(in)
		if err != nil {
			return
		}
		if err := CheckHost(h.Name); err != nil {
			t.Fatalf("CheckHost refuses %q (from %q): %v", h.Name, in, err)
		}
		again := h.Name
		if h.IP.Is6() {
			again = "[" + again + "]"
		}
		h2, err := CanonicalHost(again)
		if err != nil || h2 != h {
			t.Fatalf("not a fixed point: %q -> %+v -> %+v, %v", in, h, h2, err)
		}
		if h.IsIP() {
			if _, embeds := embeddedIPv4(h.IP); embeds || h.IP.Zone() != "" {
				t.Fatalf("%q -> %v, an IPv6 spelling of an IPv4 address", in, h.IP)
			}
		}
		if strings.ToLower(h.Name) != h.Name || strings.HasSuffix(h.Name, ".") {
			t.Fatalf("%q -> %q", in, h.Name)
		}
		for i := 0; i < len(h.Name); i++ {
			if h.Name[i] >= 0x7f {
				t.Fatalf("%q -> %q is not ASCII", in, h.Name)
			}
		}
	})
}
