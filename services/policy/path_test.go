package policy

import (
	"strings"
	"testing"
)

func TestPathPatternMatch(t *testing.T) {
	tests := []struct {
		pattern string
		path    string
		want    bool
	}{
		{pattern: "", path: "/", want: true},
		{pattern: "", path: "/anything/at/all", want: true},
		{pattern: "/**", path: "/", want: true},
		{pattern: "/**", path: "/a/b/c/", want: true},
		{pattern: "/", path: "/", want: true},
		{pattern: "/", path: "/a", want: false},
		{pattern: "/v1/charges", path: "/v1/charges", want: true},
		{pattern: "/v1/charges", path: "/v1/charges/", want: false},
		{pattern: "/v1/charges", path: "/v1/charges/ch_1", want: false},
		{pattern: "/v1/charges", path: "/v1/charge", want: false},
		{pattern: "/v1/charges", path: "/v1", want: false},
		{pattern: "/v1/charges/", path: "/v1/charges/", want: true},
		{pattern: "/v1/charges/", path: "/v1/charges", want: false},
		{pattern: "/v1/customers/*", path: "/v1/customers/cus_1", want: true},
		{pattern: "/v1/customers/*", path: "/v1/customers/", want: false},
		{pattern: "/v1/customers/*", path: "/v1/customers", want: false},
		{pattern: "/v1/customers/*", path: "/v1/customers/cus_1/cards", want: false},
		{pattern: "/v1/customers/*/cards", path: "/v1/customers/cus_1/cards", want: true},
		{pattern: "/v1/customers/*/cards", path: "/v1/customers/cus_1/sources", want: false},
		{pattern: "/*", path: "/", want: false},
		{pattern: "/*", path: "/x", want: true},
		{pattern: "/v1/products/**", path: "/v1/products", want: true},
		{pattern: "/v1/products/**", path: "/v1/products/", want: true},
		{pattern: "/v1/products/**", path: "/v1/products/prod_1", want: true},
		{pattern: "/v1/products/**", path: "/v1/products/prod_1/prices/", want: true},
		{pattern: "/v1/products/**", path: "/v1/productsX", want: false},
		{pattern: "/v1/products/**", path: "/v1/products-old/1", want: false},
		{pattern: "/v1/products/**", path: "/v1", want: false},
		{pattern: "/v1/products/**", path: "/v2/products/1", want: false},
		{pattern: "/*/items/**", path: "/u1/items", want: true},
		{pattern: "/*/items/**", path: "/u1/items/9", want: true},
		{pattern: "/caf%C3%A9", path: "/caf%C3%A9", want: true},
		{pattern: "/a:b@c", path: "/a:b@c", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" "+tt.path, func(t *testing.T) {
			p, err := parsePathPattern(tt.pattern)
			if err != nil {
				t.Fatalf("parsePathPattern(%q): %v", tt.pattern, err)
			}
			if got := p.match(tt.path); got != tt.want {
				t.Errorf("%q matches %q = %v, want %v", tt.pattern, tt.path, got, tt.want)
			}
			if got := p.String(); got != tt.pattern {
				t.Errorf("String() = %q, want %q", got, tt.pattern)
			}
		})
	}
}

func TestParsePathPatternErrors(t *testing.T) {
	tests := []struct {
		pattern string
		wantErr string
	}{
		{pattern: "v1/charges", wantErr: "start with"},
		{pattern: "*", wantErr: "start with"},
		{pattern: "/v1/**/charges", wantErr: "last segment"},
		{pattern: "/v1/***", wantErr: "whole segments"},
		{pattern: "/v1/char*", wantErr: "whole segments"},
		{pattern: "/v1//charges", wantErr: "empty segment"},
		{pattern: "//", wantErr: "empty segment"},
		{pattern: "/v1/./charges", wantErr: `"."`},
		{pattern: "/v1/../charges", wantErr: `".."`},
		{pattern: "/v1/..", wantErr: `".."`},
		{pattern: "/v1%2Fcharges", wantErr: "encoded slash"},
		{pattern: "/v1%2fcharges", wantErr: "encoded slash"},
		{pattern: "/v1%5Ccharges", wantErr: "encoded backslash"},
		{pattern: `/v1\charges`, wantErr: "backslash"},
		{pattern: "/v1/%zz", wantErr: "invalid"},
		{pattern: "/v1/%4", wantErr: "incomplete"},
		{pattern: "/caf%c3%a9", wantErr: "uppercase"},
		{pattern: "/%7Euser", wantErr: "instead of its escape"},
		{pattern: "/v1/charges?x=1", wantErr: "query"},
		{pattern: "/v1/charges#x", wantErr: "query"},
		{pattern: "/v1/a b", wantErr: "as %20"},
		{pattern: "/v1/{id}", wantErr: "as %7B"},
		{pattern: "/v1/\x01", wantErr: "control"},
		{pattern: "/v1/..;/x", wantErr: "parameters"},
		{pattern: "/café", wantErr: "as %C3"},
		{pattern: "/" + strings.Repeat("a", maxPathPatternLen), wantErr: "longer"},
	}
	for _, tt := range tests {
		t.Run(tt.pattern, func(t *testing.T) {
			_, err := parsePathPattern(tt.pattern)
			if err == nil {
				t.Fatalf("parsePathPattern(%q) succeeded, want an error", tt.pattern)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parsePathPattern(%q) = %q, want it to mention %q", tt.pattern, err, tt.wantErr)
			}
		})
	}
}

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "/", want: "/"},
		{in: "/v1/products/", want: "/v1/products/"},
		{in: "/caf%C3%A9", want: "/caf%C3%A9"},
		{in: "/caf%c3%a9", want: "/caf%C3%A9"},
		{in: "/v1/%63harges", want: "/v1/charges"},
		{in: "/%7Euser/a%2Db", want: "/~user/a-b"},
		{in: "/a%20b", want: "/a%20b"},
		{in: "/a*b/*", want: "/a*b/*"},
		{in: "/a b/é/{x}|", want: "/a%20b/%C3%A9/%7Bx%7D%7C"},
		{in: "/a%7bx", want: "/a%7Bx"},
		{in: "/a;b=c/..x/.x", want: "/a;b=c/..x/.x"},
		{in: "", wantErr: "start with"},
		{in: "v1", wantErr: "start with"},
		{in: "/a//b", wantErr: "empty segment"},
		{in: "//", wantErr: "empty segment"},
		{in: "/a/./b", wantErr: `"."`},
		{in: "/a/../b", wantErr: `".."`},
		{in: "/a/%2E%2E/b", wantErr: `".."`},
		{in: "/a/%2e", wantErr: `"."`},
		{in: "/a%2Fb", wantErr: "encoded slash"},
		{in: "/a%2fb", wantErr: "encoded slash"},
		{in: "/a%5cb", wantErr: "encoded backslash"},
		{in: `/a\b`, wantErr: "backslash"},
		{in: "/a%", wantErr: "incomplete"},
		{in: "/a%g1", wantErr: "invalid"},
		{in: "/a?b", wantErr: "query"},
		{in: "/a\x00", wantErr: "control"},
		{in: "/a\n", wantErr: "control"},
		{in: "/a\x7f", wantErr: "control"},
		{in: "/..;/admin", wantErr: "parameters"},
		{in: "/a/.;x", wantErr: "parameters"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := normalizePath(tt.in)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("normalizePath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("normalizePath(%q) = %q, want an error", tt.in, got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("normalizePath(%q) = %q, want it to mention %q", tt.in, err, tt.wantErr)
			}
		})
	}
}
