package redact

import (
	"net/url"
	"strings"
	"testing"
)

func TestFingerprint(t *testing.T) {
	// sha256("abc") = ba7816bf...
	if got := Fingerprint("abc"); got != "[redacted sha256:ba7816bf]" {
		t.Fatalf("Fingerprint(abc) = %q", got)
	}
}

func TestQuery(t *testing.T) {
	r := New([]string{"X-Extra"})
	fp := func(v string) string { return strings.ReplaceAll(Fingerprint(v), " ", "%20") }
	tests := []struct{ in, want string }{
		{"", ""},
		{"limit=3&starting_after=prod_1", "limit=3&starting_after=prod_1"},
		{"api_key=abc&limit=3", "api_key=" + fp("abc") + "&limit=3"},
		{"API_KEY=abc", "API_KEY=" + fp("abc")},
		{"access%5Ftoken=a%20b", "access%5Ftoken=" + fp("a b")},
		{"x-extra=1&flag", "x-extra=" + fp("1") + "&flag"},
		{"my_api_key=z", "my_api_key=" + fp("z")},
		{"sig=1&signature=2&X-Amz-Signature=3", "sig=" + fp("1") + "&signature=" + fp("2") + "&X-Amz-Signature=" + fp("3")},
		{"%zz=secret", "%zz=" + fp("secret")},
	}
	for _, tt := range tests {
		if got := r.Query(tt.in); got != tt.want {
			t.Errorf("Query(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if _, err := url.ParseQuery(r.Query(tt.in)); err != nil && !strings.Contains(tt.in, "%zz") {
			t.Errorf("Query(%q) does not parse: %v", tt.in, err)
		}
	}
}

func TestURL(t *testing.T) {
	r := New(nil)
	u, _ := url.Parse("https://user:hunter2@api.example.com/v1/x?token=abc&q=1#frag")
	got := r.URL(u)
	if strings.Contains(got, "hunter2") || strings.Contains(got, "user") || strings.Contains(got, "abc") || strings.Contains(got, "frag") {
		t.Fatalf("URL leaks: %q", got)
	}
	if !strings.HasPrefix(got, "https://api.example.com/v1/x?token=") || !strings.HasSuffix(got, "&q=1") {
		t.Fatalf("URL = %q", got)
	}
}

func FuzzQuery(f *testing.F) {
	f.Add("api_key=abc&x=1")
	f.Add("token=%41%42")
	f.Fuzz(func(t *testing.T, q string) {
		r := New(nil)
		out := r.Query(q)
		vals, err := url.ParseQuery(q)
		if err != nil {
			return
		}
		for k, vs := range vals {
			if !r.secretName(r.params, strings.ToLower(k)) {
				continue
			}
			for _, v := range vs {
				if len(v) >= 4 && strings.Contains(out, "="+url.QueryEscape(v)) && strings.Contains(out, k+"="+url.QueryEscape(v)) {
					t.Fatalf("secret %q=%q survives in %q", k, v, out)
				}
			}
		}
	})
}
