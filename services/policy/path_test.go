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
		{pattern: "/v1/%4", wantErr: "percent escape"},
		{pattern: "/v1/a%00", wantErr: "NUL"},
		{pattern: "/caf%c3%a9", wantErr: "uppercase"},
		{pattern: "/%7Euser", wantErr: "instead of its escape"},
		{pattern: "/v1/charges?x=1", wantErr: "query"},
		{pattern: "/v1/charges#x", wantErr: "fragment"},
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
