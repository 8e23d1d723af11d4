package redact

import (
	"bufio"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// corpusSecret is one line of testdata/secrets.txt.
type corpusSecret struct{ kind, value string }

func loadCorpus(t testing.TB) []corpusSecret {
	t.Helper()
	f, err := os.Open("testdata/secrets.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []corpusSecret
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, value, ok := strings.Cut(line, " ")
		if !ok {
			t.Fatalf("bad corpus line %q", line)
		}
		out = append(out, corpusSecret{kind, value})
	}
	if len(out) < 10 {
		t.Fatalf("corpus has %d secrets", len(out))
	}
	return out
}

// placements are the targets (path?query) a secret of kind is sent in:
// key-shaped values under harmless names and in any path segment, and
// the others where their service or parameter name puts them.
func placements(kind, s string) []string {
	switch kind {
	case "telegram_bot":
		return []string{"/bot" + s + "/sendMessage", "/bot" + s + "/getUpdates?offset=1"}
	case "slack_webhook_secret":
		return []string{"/services/T0123ABCD/B0456EFGH/" + s}
	case "discord_webhook_token":
		return []string{"/api/webhooks/123456789012345678/" + s, "/api/v10/webhooks/123456789012345678/" + s + "/messages?wait=true"}
	case "password_param":
		return []string{"/login?user=a&password=" + s, "/login?user=a;pass=" + s, "/x?PASSWD=" + s}
	case "session_param":
		return []string{"/x?session=" + s, "/x?a=1;session_id=" + s}
	case "jwt_param":
		return []string{"/x?jwt=" + s, "/x?a=1;id_jwt=" + s}
	case "auth_param":
		return []string{"/x?auth=" + s, "/x?a=1;auth=" + s, "/x?x-forwarded-authorization=" + s}
	}
	e := url.QueryEscape(s)
	return []string{
		"/v1/" + s + "/charges",
		"/v1/prefix-" + s,
		"/v1/x?q=" + s,
		"/v1/x?q=" + e,
		"/v1/x?limit=3;note=" + s,
		"/v1/x?" + s,
		"/v1/x?" + s + "=1",
		"/v1/x?q=before%20" + e + "%20after",
		"/v1/x?a=1&b=2;c=" + s + "&d=4",
	}
}

// leaks reports whether out holds s, as sent or escaped.
func leaks(out, s string) bool {
	return strings.Contains(out, s) || strings.Contains(out, url.QueryEscape(s)) || strings.Contains(out, url.PathEscape(s))
}

func TestCorpusNeverSurvives(t *testing.T) {
	r := New(nil)
	for _, sec := range loadCorpus(t) {
		for _, target := range placements(sec.kind, sec.value) {
			path, query, err := canon.CanonicalTarget(target)
			if err != nil {
				t.Fatalf("%s: CanonicalTarget(%q): %v", sec.kind, target, err)
			}
			gotPath, gotQuery := r.Path(path), r.Query(query)
			if leaks(gotPath+"?"+gotQuery, sec.value) {
				t.Errorf("%s: %q redacted to %q ? %q", sec.kind, target, gotPath, gotQuery)
			}
			// What the policy sees is still a canonical path.
			if err := canon.CheckPath(gotPath); err != nil {
				t.Errorf("%s: redacted path %q not canonical: %v", sec.kind, gotPath, err)
			}
			if _, err := url.ParseQuery(strings.ReplaceAll(gotQuery, ";", "&")); err != nil {
				t.Errorf("%s: redacted query %q does not parse: %v", sec.kind, gotQuery, err)
			}
			u, _ := url.Parse("https://api.example.test" + target)
			if got := r.URL(u); leaks(got, sec.value) {
				t.Errorf("%s: URL(%q) = %q", sec.kind, target, got)
			}
		}
	}
}

func TestPathKeepsOrdinarySegments(t *testing.T) {
	r := New(nil)
	fp := func(v string) string { return pathMarker(v) }
	tests := []struct{ in, want string }{
		{"", ""},
		{"/", "/"},
		{"/v1/products/prod_123/", "/v1/products/prod_123/"},
		{"/v1/customers/cus_9s6XKzkNRiz8i3", "/v1/customers/cus_9s6XKzkNRiz8i3"},
		{"/botanical/garden", "/botanical/garden"},
		{"/bot123456:AAHx9Kq3Zm0Vb4Rt7Y/sendMessage", "/bot" + fp("123456:AAHx9Kq3Zm0Vb4Rt7Y") + "/sendMessage"},
		{"/services/T0123ABCD/B0456EFGH/abc", "/services/T0123ABCD/B0456EFGH/" + fp("abc")},
		{"/services/other/x/abc", "/services/other/x/abc"},
		{"/api/webhooks/123456789/tok", "/api/webhooks/123456789/" + fp("tok")},
		{"/api/webhooks/latest/tok", "/api/webhooks/latest/tok"},
		{"/repos/ghp_16C7e42F292c6912E7710c838347Ae178B4a/x", "/repos/" + fp("ghp_16C7e42F292c6912E7710c838347Ae178B4a") + "/x"},
	}
	for _, tt := range tests {
		if got := r.Path(tt.in); got != tt.want {
			t.Errorf("Path(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestQuerySemicolonsAndShapes(t *testing.T) {
	r := New(nil)
	fp := queryMarker
	tests := []struct{ in, want string }{
		{"a=1;b=2", "a=1;b=2"},
		{"a=1;token=x&b=2", "a=1;token=" + fp("x") + "&b=2"},
		{"q=AKIAIOSFODNN7EXAMPL3", "q=" + fp("AKIAIOSFODNN7EXAMPL3")},
		{"xoxb-1234567890-abc", fp("xoxb-1234567890-abc")},
		{"jwt=a;session=b;pass=c;auth=d", "jwt=" + fp("a") + ";session=" + fp("b") + ";pass=" + fp("c") + ";auth=" + fp("d")},
		{"limit=10&starting_after=cus_123", "limit=10&starting_after=cus_123"},
	}
	for _, tt := range tests {
		if got := r.Query(tt.in); got != tt.want {
			t.Errorf("Query(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzCorpusSecret embeds a corpus secret between arbitrary bytes of a
// target, in the path or the query: whatever surrounds it, a canonical
// target that holds it whole never keeps it through Path and Query.
func FuzzCorpusSecret(f *testing.F) {
	corpus := loadCorpus(f)
	f.Add(uint8(0), "/v1/", "/x", false)
	f.Add(uint8(3), "/x?a=1;b=", "&c=2", true)
	f.Add(uint8(9), "/x?q=", "", true)
	f.Add(uint8(11), "/bot", "/sendMessage", false)
	f.Fuzz(func(t *testing.T, i uint8, before, after string, inQuery bool) {
		sec := corpus[int(i)%len(corpus)]
		if !LooksSecret(sec.value) {
			return // secret by name or place only: the table covers those
		}
		if !strings.HasPrefix(before, "/") {
			before = "/" + before
		}
		if inQuery && !strings.Contains(before, "?") {
			before += "?"
		}
		target := before + sec.value + after
		path, query, err := canon.CanonicalTarget(target)
		if err != nil {
			return
		}
		r := New(nil)
		out := r.Path(path) + "?" + r.Query(query)
		// Only a secret that reached the canonical target whole can be
		// asked of the redactor.
		if !leaks(path+"?"+query, sec.value) {
			return
		}
		if leaks(out, sec.value) {
			t.Fatalf("%s survives: %q -> %q", sec.kind, target, out)
		}
	})
}
