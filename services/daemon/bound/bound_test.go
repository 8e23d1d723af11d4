package bound

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestString(t *testing.T) {
	tests := []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{strings.Repeat("a", 20), 16, "aa...[truncated]"},
		{"héllo wörld, 世界 and more text", 17, "hé...[truncated]"},
		{strings.Repeat("é", 10), 15, "...[truncated]"},
		{"abcdefgh", 4, "abcd"},
		{"ab\xffcd", 10, "ab\uFFFDcd"},
		{"", 0, ""},
		{"abc", 0, ""},
	}
	for _, tt := range tests {
		got := String(tt.s, tt.n)
		if got != tt.want {
			t.Errorf("String(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
		}
		if len(got) > max(tt.n, len(strings.ToValidUTF8(tt.s, "\uFFFD"))) || !utf8.ValidString(got) {
			t.Errorf("String(%q, %d) = %q: over the bound or not UTF-8", tt.s, tt.n, got)
		}
	}
}

func FuzzString(f *testing.F) {
	f.Add("héllo wörld", 7)
	f.Add("\xff\xfe", 1)
	f.Fuzz(func(t *testing.T, s string, n int) {
		if n < 0 || n > 1<<16 {
			return
		}
		got := String(s, n)
		if !utf8.ValidString(got) {
			t.Fatalf("String(%q, %d) = %q is not UTF-8", s, n, got)
		}
		if v := strings.ToValidUTF8(s, "\uFFFD"); len(v) > n && len(got) > n {
			t.Fatalf("String(%q, %d) = %q is %d bytes", s, n, got, len(got))
		}
	})
}
