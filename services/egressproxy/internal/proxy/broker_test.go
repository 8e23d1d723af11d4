package proxy

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
)

const (
	testPlaceholder = "sk_test_SPXabcdefghijklmnopqrstuvwxyz012"
	testValue       = "sk_live_THEVALUEthatmustneverreachthesandbox"
)

// brokerDecider answers as the executor does for one secret bound to
// hang.test and api.stripe.test: a request carrying its placeholder there
// gets the swap, anywhere else is refused as secret misuse. It keeps the
// questions.
type brokerDecider struct {
	outcomeRecorder
	qmu       sync.Mutex
	questions []decide.HTTPQuestion
}

func (d *brokerDecider) AskHTTP(_ context.Context, q decide.HTTPQuestion) (decide.Verdict, error) {
	d.qmu.Lock()
	d.questions = append(d.questions, q)
	d.qmu.Unlock()
	allow := decide.Verdict{Decision: policyv1.Decision_DECISION_ALLOW, RuleID: "test"}
	for _, f := range q.Placeholders {
		if f.GetId() != testPlaceholder[len("sk_test_"):] {
			continue
		}
		if q.Host != "hang.test" && q.Host != "api.stripe.test" {
			return decide.Verdict{Decision: policyv1.Decision_DECISION_DENY, RuleID: "secrets.stripe", Reason: "secret stripe may not go to " + q.Host,
				Code: policyv1.DenialCode_DENIAL_CODE_SECRET_MISUSE}, nil
		}
		allow.Swaps = []*egressv1.Swap{{Placeholder: testPlaceholder, Value: []byte(testValue)}}
	}
	if q.Violation != "" {
		return decide.Verdict{Decision: policyv1.Decision_DECISION_DENY, RuleID: "proxy", Reason: q.Violation}, nil
	}
	return allow, nil
}

func (d *brokerDecider) AskTLS(context.Context, decide.TLSQuestion) (decide.Verdict, error) {
	return decide.Verdict{Decision: policyv1.Decision_DECISION_ALLOW}, nil
}

// echoUpstream reflects what it got, credentials and query included, and
// answers /gzip compressed.
type echoUpstream struct {
	mu   sync.Mutex
	seen []string
}

func (u *echoUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	got := fmt.Sprintf("auth=%s query=%s accept-encoding=%s", r.Header.Get("Authorization"), r.URL.RawQuery, r.Header.Get("Accept-Encoding"))
	u.mu.Lock()
	u.seen = append(u.seen, got)
	u.mu.Unlock()
	body := fmt.Sprintf(`{"auth":%q,"query":%q}`, r.Header.Get("Authorization"), r.URL.RawQuery)
	if r.URL.Path == "/gzip" {
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, body)
		zw.Close()
		return
	}
	w.Header().Set("X-Echo", r.Header.Get("Authorization"))
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	io.WriteString(w, body)
}

func (u *echoUpstream) last() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.seen) == 0 {
		return ""
	}
	return u.seen[len(u.seen)-1]
}

// TestBrokeredSecret: the upstream a secret is bound to gets the value in
// the header and the query where the sandbox put the placeholder, asked
// uncompressed; the sandbox gets the value back only as the placeholder,
// in headers and body; the placeholder sent to another host is refused as
// secret misuse and never forwarded; a compressed response to a request
// carrying a secret is refused; no question carries the value.
func TestBrokeredSecret(t *testing.T) {
	up := &echoUpstream{}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	d := &brokerDecider{}
	e := startPlain(t, Config{Decider: d}, srv.Listener.Addr().String())

	send := func(host, target string, header ...string) (*http.Response, string) {
		t.Helper()
		c := e.dialFrom(t, "127.0.0.2")
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept-Encoding: gzip\r\n%s\r\n", target, host, strings.Join(header, ""))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	resp, body := send("hang.test", "/echo", "Authorization: Bearer "+testPlaceholder+"\r\n")
	if got := up.last(); got != "auth=Bearer "+testValue+" query= accept-encoding=identity" {
		t.Errorf("the bound upstream got %q, want the value, uncompressed", got)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Echo") != "Bearer "+testPlaceholder || !strings.Contains(body, testPlaceholder) {
		t.Errorf("the sandbox got %d X-Echo %q body %q, want the placeholder reflected", resp.StatusCode, resp.Header.Get("X-Echo"), body)
	}

	_, body = send("hang.test", "/echo?key="+testPlaceholder+"&other=a%20b")
	if got := up.last(); got != "auth= query=key="+testValue+"&other=a%20b accept-encoding=identity" {
		t.Errorf("the bound upstream got %q, want the value in key and other as sent", got)
	}
	if strings.Contains(body, testValue) || !strings.Contains(body, testPlaceholder) {
		t.Errorf("the sandbox got %q, want the placeholder only", body)
	}

	before := len(up.seen)
	resp, body = send("other.test", "/echo", "Authorization: Bearer "+testPlaceholder+"\r\n")
	var refusal struct {
		Error struct{ Code, Type string } `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &refusal); err != nil || resp.StatusCode != http.StatusForbidden || refusal.Error.Code != "secret_misuse" {
		t.Errorf("the placeholder to another host: %d %s, want 403 secret_misuse", resp.StatusCode, body)
	}
	if len(up.seen) != before {
		t.Errorf("a misused placeholder was forwarded: %s", up.last())
	}

	resp, body = send("hang.test", "/gzip", "Authorization: Bearer "+testPlaceholder+"\r\n")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, upstreamUnscrubbable) || strings.Contains(body, testValue) {
		t.Errorf("a compressed response to a request with a secret: %d %s, want 502 %s", resp.StatusCode, body, upstreamUnscrubbable)
	}

	var many strings.Builder
	for i := range 17 {
		fmt.Fprintf(&many, "X-K%d: sk_SPX%029d\r\n", i, i)
	}
	resp, body = send("hang.test", "/echo", many.String())
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "more than 16 placeholders") {
		t.Errorf("17 placeholders: %d %s, want a 403 violation", resp.StatusCode, body)
	}

	d.qmu.Lock()
	defer d.qmu.Unlock()
	for _, q := range d.questions {
		if strings.Contains(fmt.Sprint(q), testValue) {
			t.Errorf("a question carries the value: %v", q)
		}
	}
	if f := d.questions[0].Placeholders; len(f) != 1 || f[0].GetPlace() != egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_HEADER || f[0].GetValue() != "Bearer "+testPlaceholder {
		t.Errorf("the first question's placeholders %v, want the Authorization header's", f)
	}
}

// TestBrokeredSecretH2: over HTTP/2 the same swap, and the same scrub.
func TestBrokeredSecretH2(t *testing.T) {
	d := &brokerDecider{}
	e := setupWithLog(t, slog.DiscardHandler, func(c *Config) { c.Decider = d })
	req, _ := http.NewRequest("GET", "https://api.stripe.test/echo-auth", nil)
	req.Header.Set("Authorization", "Bearer "+testPlaceholder)
	resp, err := e.h2Client("api.stripe.test").Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if seen := e.upstream.requests(); len(seen) != 1 || !strings.HasSuffix(seen[0], "auth=Bearer "+testValue) {
		t.Errorf("the upstream saw %v, want the value", seen)
	}
	if resp.Header.Get("X-Echo") != "Bearer "+testPlaceholder || strings.Contains(string(body), testValue) || !strings.Contains(string(body), testPlaceholder) {
		t.Errorf("the sandbox got X-Echo %q body %s, want the placeholder only", resp.Header.Get("X-Echo"), body)
	}
}

// BenchmarkBrokeredRequest measures what brokering adds to a kept-alive
// request through the proxy (the decider in process, a local upstream
// that reflects the credentials in a 1 KiB body): a request with an
// ordinary bearer token, and one whose placeholder is swapped for the value
// and the value scrubbed from the response.
func BenchmarkBrokeredRequest(b *testing.B) {
	pad := strings.Repeat("x", 1<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"auth":%q,"pad":%q}`, r.Header.Get("Authorization"), pad)
	}))
	b.Cleanup(srv.Close)
	e := startPlain(b, Config{Decider: &brokerDecider{}}, srv.Listener.Addr().String())
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		return d.DialContext(ctx, "tcp", e.addr)
	}}}
	b.Cleanup(client.CloseIdleConnections)
	for _, tc := range []struct{ name, auth, want string }{
		{"plain", "Bearer sk_test_an0rdinaryKeyOfTheSameLength0000000", "sk_test_an0rdinaryKeyOfTheSameLength0000000"},
		{"brokered", "Bearer " + testPlaceholder, testPlaceholder},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				req, _ := http.NewRequest("GET", "http://hang.test/echo", nil)
				req.Header.Set("Authorization", tc.auth)
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), tc.want) || strings.Contains(string(body), testValue) {
					b.Fatalf("%d %v %.80s", resp.StatusCode, err, body)
				}
			}
		})
	}
}
