package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/mitm"
)

// passDecider answers every server name with v and records what the
// proxy reports.
type passDecider struct {
	outcomeRecorder
	v     decide.Verdict
	asked atomic.Int32
}

func (d *passDecider) AskTLS(context.Context, decide.TLSQuestion) (decide.Verdict, error) {
	d.asked.Add(1)
	return d.v, nil
}

func (d *passDecider) reports() ([]decide.Outcome, []decide.Refusal) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]decide.Outcome(nil), d.outcomes...), append([]decide.Refusal(nil), d.refusals...)
}

// countingConn counts the bytes a client writes and reads.
type countingConn struct {
	net.Conn
	wrote, read atomic.Uint64
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.wrote.Add(uint64(n))
	return n, err
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(uint64(n))
	return n, err
}

// startPinned starts a TLS upstream for pinned.test with a certificate of
// its own CA, and the proxy (original destination port 443) with d; it
// returns the proxy and the pool a pinning client trusts: the upstream's
// CA only.
func startPinned(t *testing.T, d Decider, body string) (*plainEnv, *x509.CertPool) {
	t.Helper()
	ca, err := mitm.NewCA("pinned upstream CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := mitm.NewMinter(ca, 1).Certificate("pinned.test")
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	up.StartTLS()
	t.Cleanup(up.Close)
	proxyCA, err := mitm.NewCA("proxy test CA")
	if err != nil {
		t.Fatal(err)
	}
	e := startPlain(t, Config{Minter: mitm.NewMinter(proxyCA, 4), Decider: d,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return netip.MustParseAddrPort("203.0.113.10:443"), nil },
	}, up.Listener.Addr().String())
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return e, pool
}

// pinnedResult is what a pinning client got: the body, and the raw bytes
// it wrote (until the upstream's end, and with the close_notify it sends
// after it, which the relay may or may not still pass on) and read.
type pinnedResult struct {
	body              string
	wrote, wroteTotal uint64
	read              uint64
}

// getPinned makes one HTTPS request to pinned.test through the proxy with
// a client that trusts pool only.
func getPinned(t *testing.T, e *plainEnv, pool *x509.CertPool) (pinnedResult, error) {
	t.Helper()
	raw := &countingConn{Conn: e.dialFrom(t, "127.0.0.1")}
	tc := tls.Client(raw, &tls.Config{ServerName: "pinned.test", RootCAs: pool, NextProtos: []string{"http/1.1"}})
	err := tc.Handshake()
	if err == nil {
		_, err = io.WriteString(tc, "GET /x HTTP/1.1\r\nHost: pinned.test\r\nConnection: close\r\n\r\n")
	}
	var b []byte
	if err == nil {
		b, err = io.ReadAll(tc)
	}
	res := pinnedResult{body: string(b), wrote: raw.wrote.Load(), read: raw.read.Load()}
	tc.Close()
	res.wroteTotal = raw.wrote.Load()
	return res, err
}

// TestPassthroughSplices: a passed-through connection reaches the
// upstream with its own certificate (a client pinning it succeeds), the
// proxy reports one outcome with exactly the bytes the client wrote and
// read, and no refusal; intercepted, the same client fails on the proxy's
// leaf.
func TestPassthroughSplices(t *testing.T) {
	d := &passDecider{v: decide.Verdict{QuestionID: 7, Decision: policyv1.Decision_DECISION_ALLOW, RuleID: "hosts[0].passthrough", Passthrough: true}}
	e, pool := startPinned(t, d, "pinned hello")
	got, err := getPinned(t, e, pool)
	if err != nil || !strings.HasSuffix(got.body, "pinned hello") {
		t.Fatalf("through pass-through: %q, %v", got.body, err)
	}
	var outs []decide.Outcome
	waitFor(t, "the pass-through's outcome", func() bool { outs, _ = d.reports(); return len(outs) > 0 })
	o := outs[0]
	ended := o.Error == "pass-through closed by the upstream" || o.Error == "pass-through closed by the sandbox"
	if o.QuestionID != 7 || o.BytesSent < got.wrote || o.BytesSent > got.wroteTotal || o.BytesReceived != got.read || got.wrote == 0 || got.read == 0 || o.Duration <= 0 || !ended {
		t.Errorf("outcome %+v, want question 7 with %d (or with the close_notify %d) bytes sent and %d received", o, got.wrote, got.wroteTotal, got.read)
	}
	if _, refs := d.reports(); len(refs) != 0 || len(outs) != 1 {
		t.Errorf("%d outcomes, refusals %+v; want one outcome and no refusal", len(outs), refs)
	}

	// Each connection is asked about on its own (never from the gate's
	// memory).
	if _, err := getPinned(t, e, pool); err != nil || d.asked.Load() != 2 {
		t.Errorf("second connection: %v, asked %d times, want 2", err, d.asked.Load())
	}

	// Intercepted, the pinning client sees the proxy's leaf.
	d.v = decide.Verdict{Decision: policyv1.Decision_DECISION_ALLOW, RuleID: "tls"}
	var unknown x509.UnknownAuthorityError
	if _, err := getPinned(t, e, pool); !errors.As(err, &unknown) {
		t.Errorf("intercepted: %v, want an unknown authority", err)
	}
}

// TestPassthroughBounds: the bytes left of a total bound a direction (the
// relay is cut there, no byte past it passed on), and a pass-through the
// executor refused (and recorded) is closed without a refusal report.
func TestPassthroughBounds(t *testing.T) {
	d := &passDecider{v: decide.Verdict{QuestionID: 1, Decision: policyv1.Decision_DECISION_ALLOW, Passthrough: true, MaxResponseBytes: 2000}}
	e, pool := startPinned(t, d, strings.Repeat("b", 10000))
	got, err := getPinned(t, e, pool)
	if err == nil {
		t.Errorf("a response past the bound arrived whole")
	}
	var outs []decide.Outcome
	waitFor(t, "the cut pass-through's outcome", func() bool { outs, _ = d.reports(); return len(outs) > 0 })
	want := "pass-through cut: the upstream sent more than 2000 bytes (limits.max_total_response_bytes)"
	if o := outs[0]; o.Error != want || o.BytesReceived != 2000 || got.read != 2000 {
		t.Errorf("outcome %+v, client read %d; want %q at 2000 bytes", o, got.read, want)
	}

	d.v = decide.Verdict{Decision: policyv1.Decision_DECISION_DENY, RuleID: "limits.max_requests", Reason: "the execution may make 1 requests", Passthrough: true}
	if _, err := getPinned(t, e, pool); err == nil {
		t.Fatal("a refused pass-through handshake succeeded")
	}
	if _, refs := d.reports(); len(refs) != 0 {
		t.Errorf("refusals %+v: the executor recorded this one", refs)
	}
}
