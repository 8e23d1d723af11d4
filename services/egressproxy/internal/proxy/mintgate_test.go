package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/metricstest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
)

// handshake opens a TLS connection to the proxy for sni and says whether
// the handshake succeeded.
func (e *env) handshake(t *testing.T, sni string) bool {
	t.Helper()
	c, err := tls.Dial("tcp", e.tlsAddr, &tls.Config{ServerName: sni, RootCAs: e.proxyCA, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func (e *env) tlsQuestions() []*egressv1.TlsServerName {
	var qs []*egressv1.TlsServerName
	for _, r := range e.decider.Received() {
		if q := r.GetQuestion().GetTls(); q != nil {
			qs = append(qs, q)
		}
	}
	return qs
}

func (e *env) refusals(t *testing.T, class string) float64 {
	t.Helper()
	return metricstest.Value(t, e.metrics, "sandpit_egress_connections_refused_total", map[string]string{"reason": class})
}

// TestServerNameGate: a name no rule could allow is refused at the
// handshake, reported with a reason naming it, and never minted for; an
// allowed one is minted once and its answer remembered, so a second
// connection asks nothing; Release forgets the answers.
func TestServerNameGate(t *testing.T) {
	e := setup(t)
	if e.handshake(t, "evil.example") {
		t.Fatal("handshake for a name no rule allows succeeded")
	}
	r := e.decider.WaitFor(t, "the refusal", func(r *egressv1.DecideRequest) bool { return r.GetReport().GetRefusal() != nil }).GetReport().GetRefusal()
	if want := `TLS server name "evil.example" refused at the handshake: not in policy`; r.GetReason() != want || r.GetDestination() != "203.0.113.10:443" {
		t.Fatalf("refusal %v, want reason %q", r, want)
	}
	if e.minter.Minted() != 0 || e.refusals(t, refusedSNINotAllowed) != 1 {
		t.Fatalf("minted %d, sni_not_allowed %v: want 0 and 1", e.minter.Minted(), e.refusals(t, refusedSNINotAllowed))
	}
	for range 2 {
		if !e.handshake(t, "api.stripe.test") {
			t.Fatal("handshake for an allowed name failed")
		}
	}
	qs := e.tlsQuestions()
	if len(qs) != 2 || qs[1].GetName() != "api.stripe.test" || qs[1].GetPort() != 443 || qs[1].GetSourceIp() != "127.0.0.1" {
		t.Fatalf("TLS questions %v, want evil.example then api.stripe.test once", qs)
	}
	if e.minter.Minted() != 1 {
		t.Fatalf("minted %d, want 1", e.minter.Minted())
	}
	// A request on an allowed connection is still decided on its own.
	resp := get(t, e.h1Client("api.stripe.test"), "POST", "https://api.stripe.test/v1/charges", nil)
	expectBlocked(t, resp, "charges are not allowed")

	e.proxy.CloseSource(netip.MustParseAddr("127.0.0.1"))
	if !e.handshake(t, "api.stripe.test") {
		t.Fatal("handshake after release failed")
	}
	if n := len(e.tlsQuestions()); n != 3 {
		t.Fatalf("%d TLS questions, want 3: the release forgets the answers", n)
	}
}

// TestServerNameGateFailsClosed: with the decide stream down a new
// connection's handshake goes on within the mint rate, and its request is
// denied with the unavailable reason the sandbox can read; past the mint
// rate the handshake is refused, saying both.
func TestServerNameGateFailsClosed(t *testing.T) {
	var logs syncBuffer
	e := setupWithLog(t, slog.NewJSONHandler(&logs, nil), func(c *Config) { c.LeafMintRate, c.LeafMintBurst = 0.01, 1 })
	e.decider.Stop()
	waitFor(t, "the stream to go", func() bool { return !e.client.Connected() })
	resp := get(t, e.h1Client("api.stripe.test"), "GET", "https://api.stripe.test/v1/products", nil)
	expectBlocked(t, resp, "policy decision unavailable: no decide stream")
	if e.handshake(t, "other.stripe.test") {
		t.Fatal("a second new name over the mint burst got a leaf")
	}
	if e.minter.Minted() != 1 || e.refusals(t, refusedMintRate) != 1 || len(e.upstream.requests()) != 0 {
		t.Fatalf("minted %d, leaf_mint_rate %v, upstream %v: want 1, 1 and nothing", e.minter.Minted(), e.refusals(t, refusedMintRate), e.upstream.requests())
	}
	if want := `burst 1); and policy decision unavailable: no decide stream`; !strings.Contains(logs.String(), want) {
		t.Fatalf("log lacks %q:\n%s", want, logs.String())
	}
}

// TestLeafMintRate: under a pattern that allows endless names, a source
// mints at most its burst (and then its rate) of new leaves; names already
// minted cost nothing and still connect.
func TestLeafMintRate(t *testing.T) {
	const burst = 3
	e := setupWithLog(t, slog.DiscardHandler, func(c *Config) { c.LeafMintRate, c.LeafMintBurst = 0.01, burst })
	var ok []string
	for i := range burst + 2 {
		if name := fmt.Sprintf("n%d.stripe.test", i); e.handshake(t, name) {
			ok = append(ok, name)
		}
	}
	if len(ok) != burst || e.minter.Minted() != burst || e.refusals(t, refusedMintRate) != 2 {
		t.Fatalf("connected %v, minted %d, leaf_mint_rate %v: want %d, %d and 2", ok, e.minter.Minted(), e.refusals(t, refusedMintRate), burst, burst)
	}
	r := e.decider.WaitFor(t, "the refusal", func(r *egressv1.DecideRequest) bool { return r.GetReport().GetRefusal() != nil }).GetReport().GetRefusal()
	if !strings.Contains(r.GetReason(), `"n3.stripe.test" refused at the handshake: this sandbox asked for more new server names than the proxy mints certificates for (0.01 a second, burst 3)`) {
		t.Fatalf("refusal reason %q", r.GetReason())
	}
	if !e.handshake(t, ok[0]) {
		t.Fatal("a name already minted was refused")
	}
}

// TestServerNameGateRemembersBriefly: an answer is trusted for gateTTL
// only, so a policy reload reaches the gate.
func TestServerNameGateRemembersBriefly(t *testing.T) {
	e := setup(t)
	if !e.handshake(t, "api.stripe.test") {
		t.Fatal("handshake failed")
	}
	src := netip.MustParseAddr("127.0.0.1")
	e.proxy.mu.Lock()
	for k, a := range e.proxy.gates[src].names {
		a.at = a.at.Add(-gateTTL - time.Second)
		e.proxy.gates[src].names[k] = a
	}
	e.proxy.mu.Unlock()
	if !e.handshake(t, "api.stripe.test") {
		t.Fatal("handshake failed")
	}
	if n := len(e.tlsQuestions()); n != 2 {
		t.Fatalf("%d TLS questions, want 2: a stale answer is asked again", n)
	}
}

// limitedTLS is a Decider whose source is over its question limits.
type limitedTLS struct{ Decider }

func (limitedTLS) AskTLS(context.Context, decide.TLSQuestion) (decide.Verdict, error) {
	return decide.Verdict{Reason: "rate limited: test"}, fmt.Errorf("%w: test", decide.ErrRateLimited)
}

// TestServerNameGateRateLimited: a source over its question limits is
// refused at the handshake, counted, and not reported per connection (the
// limiter reports it, sampled).
func TestServerNameGateRateLimited(t *testing.T) {
	e := setupWithLog(t, slog.DiscardHandler, func(c *Config) { c.Decider = limitedTLS{c.Decider} })
	for range 3 {
		if e.handshake(t, "api.stripe.test") {
			t.Fatal("handshake over the question limits succeeded")
		}
	}
	if got := e.refusals(t, refusedSNIUndecided); got != 3 || e.minter.Minted() != 0 {
		t.Fatalf("sni_undecided %v, minted %d: want 3 and 0", got, e.minter.Minted())
	}
	for _, r := range e.decider.Received() {
		if r.GetReport().GetRefusal() != nil {
			t.Fatalf("refusal reported per connection: %v", r)
		}
	}
}

// unownedTLS is a Decider for a source no execution owns (a warm sandbox
// before its claim), asking the real one's decider as well, so that the
// questions are counted, until owned is set.
type unownedTLS struct {
	Decider
	owned *atomic.Bool
}

func (u unownedTLS) AskTLS(ctx context.Context, q decide.TLSQuestion) (decide.Verdict, error) {
	v, err := u.Decider.AskTLS(ctx, q)
	if u.owned.Load() {
		return v, err
	}
	return decide.Verdict{Decision: policyv1.Decision_DECISION_DENY, RuleID: "no-execution", Reason: "no running execution owns source address",
		Code: policyv1.DenialCode_DENIAL_CODE_DECISION_UNAVAILABLE}, nil
}

// TestServerNameGateForgetsUnowned: a name refused because no execution
// owns the source is refused at the handshake but not remembered: once an
// execution owns the address, its first connection is asked about and
// allowed.
func TestServerNameGateForgetsUnowned(t *testing.T) {
	var owned atomic.Bool
	e := setupWithLog(t, slog.DiscardHandler, func(c *Config) { c.Decider = unownedTLS{c.Decider, &owned} })
	if e.handshake(t, "api.stripe.test") {
		t.Fatal("handshake from a source no execution owns succeeded")
	}
	owned.Store(true)
	if !e.handshake(t, "api.stripe.test") {
		t.Fatal("the owning execution's handshake was refused by the answer for no execution")
	}
	if n := len(e.tlsQuestions()); n != 2 {
		t.Fatalf("%d TLS questions, want 2", n)
	}
}

// BenchmarkNewTLSConnectionGateMiss is BenchmarkNewTLSConnection with the
// gate's answer forgotten before each connection: the handshake plus one
// TLS question over the Decide stream, what a name's first connection in
// gateTTL costs.
func BenchmarkNewTLSConnectionGateMiss(b *testing.B) {
	p, handshake := benchProxy(b)
	handshake() // mint the leaf
	b.ResetTimer()
	for b.Loop() {
		p.mu.Lock()
		clear(p.gates)
		p.mu.Unlock()
		handshake()
	}
}

// BenchmarkGateCached is the gate alone on a name already answered and
// minted: what it adds to every new connection.
func BenchmarkGateCached(b *testing.B) {
	p, handshake := benchProxy(b)
	handshake()
	info := connInfo{src: netip.MustParseAddr("127.0.0.1"), dst: netip.MustParseAddrPort("203.0.113.10:443"), scheme: "https", sni: "api.stripe.test"}
	for b.Loop() {
		if class, reason, _ := p.gateServerName(context.Background(), info); class != "" {
			b.Fatal(reason)
		}
	}
}
