package canon

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckHost(t *testing.T) {
	tests := []struct {
		in      string
		wantErr error // nil: canonical
	}{
		{in: "api.stripe.com"},
		{in: "my_bucket.s3.amazonaws.com"},
		{in: "r3---sn-abc.googlevideo.com"},
		{in: "xn--mnchen-3ya.de"},
		{in: "localhost"},
		{in: "1.2.3.4"},
		{in: "169.254.169.254"},
		{in: "::1"},
		{in: "::"},
		{in: "2001:db8::1"},
		{in: "64:ff9b:1::a9fe:a9fe"},
		{in: "API.stripe.com", wantErr: ErrNotCanonical},
		{in: "api.stripe.com.", wantErr: ErrNotCanonical},
		{in: "münchen.de", wantErr: ErrNotCanonical},
		{in: "ｅｘａｍｐｌｅ.com", wantErr: ErrNotCanonical},
		{in: "[::1]", wantErr: ErrNotCanonical},
		{in: "2001:DB8::1", wantErr: ErrNotCanonical},
		{in: "2001:db8:0::1", wantErr: ErrNotCanonical},
		{in: "::ffff:1.2.3.4", wantErr: ErrNotCanonical},
		{in: "::ffff:102:304", wantErr: ErrNotCanonical},
		{in: "::1.2.3.4", wantErr: ErrNotCanonical},
		{in: "64:ff9b::102:304", wantErr: ErrNotCanonical},
		{in: "2002:102:304::", wantErr: ErrNotCanonical},
		{in: "0x7f.1", wantErr: ErrNotCanonical},
		{in: "2130706433", wantErr: ErrNotCanonical},
		{in: "010.0.0.1", wantErr: ErrNotCanonical},
		{in: "1.2.3", wantErr: ErrNotCanonical},
		{in: "", wantErr: ErrHost},
		{in: "a..b", wantErr: ErrHost},
		{in: "api.stripe.com:443", wantErr: ErrHost},
		{in: "256.0.0.1", wantErr: ErrHost},
		{in: "example.123", wantErr: ErrHost},
		{in: "xn--zz.example", wantErr: ErrHost},
		{in: "fe80::1%eth0", wantErr: ErrHost},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			err := CheckHost(tt.in)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("CheckHost(%q) = %v, want nil", tt.in, err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("CheckHost(%q) = %v, want %v", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestCheckHostAllocs(t *testing.T) {
	for _, h := range []string{"api.stripe.com", "10.0.0.5", "2001:db8::1"} {
		if n := testing.AllocsPerRun(100, func() { _ = CheckHost(h) }); n != 0 {
			t.Errorf("CheckHost(%q) allocates %v times", h, n)
		}
	}
}

func TestCheckPath(t *testing.T) {
	tests := []struct {
		in      string
		wantErr error  // nil: canonical
		mention string // a substring of the error
	}{
		{in: "/"},
		{in: "/v1/products/"},
		{in: "/caf%C3%A9"},
		{in: "/a%20b"},
		{in: "/a*b/*"},
		{in: "/a;b=c/..x/.x"},
		{in: "/x;y=1/:@!$&'()*+,="},
		{in: "/%25"},
		{in: "", wantErr: ErrNotCanonical, mention: "start with"},
		{in: "v1", wantErr: ErrNotCanonical, mention: "start with"},
		{in: "/a//b", wantErr: ErrNotCanonical, mention: "empty segment"},
		{in: "//", wantErr: ErrNotCanonical, mention: "empty segment"},
		{in: "/a/./b", wantErr: ErrNotCanonical, mention: `"."`},
		{in: "/a/../b", wantErr: ErrNotCanonical, mention: `".."`},
		{in: "/a/..", wantErr: ErrNotCanonical, mention: `".."`},
		{in: "/caf%c3%a9", wantErr: ErrNotCanonical, mention: "uppercase"},
		{in: "/v1/%63harges", wantErr: ErrNotCanonical, mention: "instead of its escape"},
		{in: "/a/%2E%2E/b", wantErr: ErrNotCanonical, mention: "instead of its escape"},
		{in: "/a b", wantErr: ErrNotCanonical, mention: "as %20"},
		{in: "/{x}", wantErr: ErrNotCanonical, mention: "as %7B"},
		{in: "/é", wantErr: ErrNotCanonical, mention: "as %C3"},
		{in: "/a?b", wantErr: ErrNotCanonical, mention: "query"},
		{in: "/a#b", wantErr: ErrAmbiguousPath, mention: "fragment"},
		{in: "/a%2Fb", wantErr: ErrAmbiguousPath, mention: "encoded slash"},
		{in: "/a%2fb", wantErr: ErrAmbiguousPath, mention: "encoded slash"},
		{in: "/a%5cb", wantErr: ErrAmbiguousPath, mention: "encoded backslash"},
		{in: "/a%00", wantErr: ErrAmbiguousPath, mention: "NUL"},
		{in: `/a\b`, wantErr: ErrAmbiguousPath, mention: "backslash"},
		{in: "/a%", wantErr: ErrAmbiguousPath, mention: "percent escape"},
		{in: "/a%g1", wantErr: ErrAmbiguousPath, mention: "percent escape"},
		{in: "/a\x00", wantErr: ErrAmbiguousPath, mention: "control"},
		{in: "/a\x7f", wantErr: ErrAmbiguousPath, mention: "control"},
		{in: "/..;/admin", wantErr: ErrAmbiguousPath, mention: "parameters"},
		{in: "/a/.;x", wantErr: ErrAmbiguousPath, mention: "parameters"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			err := CheckPath(tt.in)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("CheckPath(%q) = %v, want nil", tt.in, err)
				}
				if p, q, err := CanonicalTarget(tt.in); err != nil || p != tt.in || q != "" {
					t.Fatalf("CanonicalTarget(%q) = %q, %q, %v: not a fixed point", tt.in, p, q, err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("CheckPath(%q) = %v, want %v mentioning %q", tt.in, err, tt.wantErr, tt.mention)
			}
		})
	}
}

func TestCheckPathAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _ = CheckPath("/v1/products/prod_1/prices") }); n != 0 {
		t.Errorf("CheckPath allocates %v times", n)
	}
}
