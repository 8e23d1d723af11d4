package proxy

import (
	"bufio"
	"io"
	"strings"
	"testing"
)

// TestOverrideHeadersNeverForwarded sends every method- and path-override
// header, in several spellings, with an allowed GET: the upstream sees the
// request without any of them, over HTTP/1.1 and HTTP/2.
func TestOverrideHeadersNeverForwarded(t *testing.T) {
	hdr := map[string]string{
		"X-HTTP-Method-Override": "POST",
		"X-HTTP-Method":          "DELETE",
		"X-Method-Override":      "PUT",
		"X-Original-URL":         "/v1/charges",
		"X-Rewrite-URL":          "/v1/charges",
		"X-Kept":                 "yes",
	}
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		t.Run(proto, func(t *testing.T) {
			e := setup(t)
			c := e.h1Client("api.stripe.test")
			if proto == "HTTP/2" {
				c = e.h2Client("api.stripe.test")
			}
			resp := get(t, c, "GET", "https://api.stripe.test/v1/products", hdr)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d, want 200", resp.StatusCode)
			}
			assertNoOverride(t, e, "GET /v1/products")
		})
	}
}

// TestOverrideHeaderSpellingsNeverForwarded covers what a client library
// would not send: lowercase, underscores, repeats.
func TestOverrideHeaderSpellingsNeverForwarded(t *testing.T) {
	e := setup(t)
	resp := e.raw(t, "api.stripe.test", "GET /v1/products HTTP/1.1\r\nHost: api.stripe.test\r\n"+
		"x-http-method-override: POST\r\n"+
		"X_HTTP_METHOD_OVERRIDE: POST\r\n"+
		"x_original_url: /v1/charges\r\n"+
		"X-Rewrite-Url: /a\r\nX-Rewrite-Url: /b\r\n"+
		"X-Kept: yes\r\nConnection: close\r\n\r\n")
	_, _ = io.Copy(io.Discard, bufio.NewReader(resp.Body))
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	assertNoOverride(t, e, "raw GET /v1/products")
}

func assertNoOverride(t *testing.T, e *env, what string) {
	t.Helper()
	got := e.upstream.requestHeaders()
	if len(got) != 1 {
		t.Fatalf("%s: upstream saw %d requests, want 1", what, len(got))
	}
	h := got[0]
	for k := range h {
		n := strings.ToLower(strings.ReplaceAll(k, "_", "-"))
		switch n {
		case "x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url":
			t.Errorf("%s: upstream got %s: %q", what, k, h[k])
		}
	}
	if h.Get("X-Kept") != "yes" {
		t.Errorf("%s: an ordinary header was dropped too: %v", what, h)
	}
	if r := e.upstream.requests(); !strings.Contains(r[0], " GET ") {
		t.Errorf("%s: upstream saw %q", what, r[0])
	}
}
