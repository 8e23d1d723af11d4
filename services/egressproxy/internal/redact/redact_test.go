package redact

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestHeaderValue(t *testing.T) {
	r := New([]string{"X-Custom-Secret-Header"}, nil)
	const key = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
	tests := []struct {
		name, value, want string
	}{
		{"Authorization", "Bearer " + key, "Bearer " + Fingerprint(key)},
		{"authorization", "Basic dXNlcjpwYXNz", "Basic " + Fingerprint("dXNlcjpwYXNz")},
		{"Authorization", key, Fingerprint(key)},
		{"Proxy-Authorization", "Basic abc", "Basic " + Fingerprint("abc")},
		{"Cookie", "sid=abc; theme=dark", "sid=" + Fingerprint("abc") + "; theme=" + Fingerprint("dark")},
		{"Set-Cookie", "sid=abc; Path=/; HttpOnly", "sid=" + Fingerprint("abc") + "; Path=/; HttpOnly"},
		{"X-Api-Key", key, Fingerprint(key)},
		{"x-custom-secret-header", "v", Fingerprint("v")},
		{"X-Custom-Token", "v", Fingerprint("v")},
		{"Stripe-Version", "2024-06-20", "2024-06-20"},
		{"Content-Type", "application/json", "application/json"},
		{"User-Agent", "Stripe/v1 NodeBindings", "Stripe/v1 NodeBindings"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := r.HeaderValue(tt.name, tt.value); got != tt.want {
				t.Fatalf("HeaderValue(%q, %q) = %q, want %q", tt.name, tt.value, got, tt.want)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	// sha256("abc") = ba7816bf...
	if got := Fingerprint("abc"); got != "[redacted sha256:ba7816bf]" {
		t.Fatalf("Fingerprint(abc) = %q", got)
	}
}

func TestHeaders(t *testing.T) {
	r := New(nil, nil)
	h := http.Header{"Authorization": {"Bearer s3cret"}, "Accept": {"a", "b"}}
	got := r.Headers(h)
	want := []Header{{"accept", "a"}, {"accept", "b"}, {"authorization", "Bearer " + Fingerprint("s3cret")}}
	if len(got) != len(want) {
		t.Fatalf("Headers = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Headers[%d] = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestQuery(t *testing.T) {
	r := New(nil, []string{"X-Extra"})
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
	r := New(nil, nil)
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
		r := New(nil, nil)
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
