package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/bound"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
)

// Leaf minting bounds, the defaults of --leaf-mint-rate and
// --leaf-mint-burst. Only names some rule of the source's execution could
// allow get a leaf (the server-name gate), but a wildcard host pattern
// allows a sandbox endless distinct names; minting one costs a key and a
// signature, and a new name evicts another from the shared leaf cache. So
// each source address mints at most this many new leaves (a name already
// cached costs nothing).
const (
	DefaultLeafMintRate  = 10 // a second
	DefaultLeafMintBurst = 50
)

// The server-name gate's memory of what the executor answered, per source:
// at most gateNamesPerSource names (then it starts afresh), each trusted for
// gateTTL so that a policy reload reaches the gate soon. It is dropped when
// the source is released; the gates of sources without a connection are
// swept when there are more than maxGates.
const (
	gateNamesPerSource = 1024
	gateTTL            = 10 * time.Second
	maxGates           = 4096
)

// sourceGate is one source's gate state; Proxy.mu guards it.
type sourceGate struct {
	names map[gateKey]gateAnswer
	// The mint bucket: tokens left at last.
	tokens float64
	last   time.Time
}

type gateKey struct {
	name string
	port uint16
}

type gateAnswer struct {
	allowed bool
	reason  string // the executor's, when denied
	at      time.Time
}

// gateServerName decides whether info.sni may get a leaf: some rule of the
// source's execution could allow https to it, and the source is within its
// mint rate if the leaf must be minted. It returns the refusal class and
// reason, or "" to go on. This bounds what minting costs; each request on
// the connection is still decided on its own. When the decision is
// unavailable only the mint rate applies (see below); a source over its
// question rate limits is refused (sni_undecided).
//
// An answer marked passthrough is returned as v, and is never remembered:
// each spliced connection is asked about, and recorded, on its own; it
// needs no leaf, so the mint rate does not apply.
func (p *Proxy) gateServerName(ctx context.Context, info connInfo) (class, reason string, v decide.Verdict) {
	name := bound.String(info.sni, decide.MaxHostBytes)
	refused := func(why string) string {
		return fmt.Sprintf("TLS server name %q refused at the handshake: %s", name, why)
	}
	key := gateKey{name: info.sni, port: info.dst.Port()}
	a, ok := p.gateAnswer(info.src, key)
	undecided := ""
	if !ok {
		var err error
		v, err = p.cfg.Decider.AskTLS(ctx, decide.TLSQuestion{SourceIP: info.src, Name: info.sni, Port: key.port})
		switch {
		case errors.Is(err, decide.ErrUnavailable):
			// Fail closed at the request, not here: the handshake goes on
			// within the mint rate, every request on it is denied with
			// the unavailable reason the sandbox can read (a refused
			// handshake tells it nothing), and the name is asked again
			// next time.
			undecided = v.Reason
			a = gateAnswer{allowed: true}
		case err != nil:
			return refusedSNIUndecided, refused(v.Reason), decide.Verdict{}
		case v.Passthrough && v.Forward():
			return "", "", v
		case v.Passthrough:
			return refusedSNINotAllowed, refused(v.Reason), v
		case v.Code == policyv1.DenialCode_DENIAL_CODE_DECISION_UNAVAILABLE:
			// No execution owns the source (yet: a warm sandbox before
			// its claim): refused, and asked again next time, so that
			// the execution that gets the address is not refused for it.
			return refusedSNINotAllowed, refused(v.Reason), decide.Verdict{}
		default:
			a = gateAnswer{allowed: v.Forward(), reason: v.Reason, at: time.Now()}
			p.rememberGate(info.src, key, a)
		}
	}
	if !a.allowed {
		return refusedSNINotAllowed, refused(a.reason), decide.Verdict{}
	}
	if !p.cfg.Minter.Cached(info.sni) && !p.takeMint(info.src) {
		why := fmt.Sprintf("this sandbox asked for more new server names than the proxy mints certificates for (%g a second, burst %d)", p.cfg.LeafMintRate, p.cfg.LeafMintBurst)
		if undecided != "" {
			why += "; and " + undecided
		}
		return refusedMintRate, refused(why), decide.Verdict{}
	}
	return "", "", decide.Verdict{}
}

// gate returns src's gate, made if need be; p.mu is held.
func (p *Proxy) gate(src netip.Addr) *sourceGate {
	g := p.gates[src]
	if g != nil {
		return g
	}
	if len(p.gates) >= maxGates {
		for s := range p.gates {
			if p.perSource[s] == 0 {
				delete(p.gates, s)
			}
		}
	}
	g = &sourceGate{names: map[gateKey]gateAnswer{}, tokens: float64(p.cfg.LeafMintBurst), last: time.Now()}
	p.gates[src] = g
	return g
}

func (p *Proxy) gateAnswer(src netip.Addr, key gateKey) (gateAnswer, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, ok := p.gate(src).names[key]
	if !ok || time.Since(a.at) > gateTTL {
		return gateAnswer{}, false
	}
	return a, true
}

func (p *Proxy) rememberGate(src netip.Addr, key gateKey, a gateAnswer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.gate(src)
	if len(g.names) >= gateNamesPerSource {
		clear(g.names)
	}
	g.names[key] = a
}

// takeMint takes one of src's mint tokens; a rate of 0 is no limit.
func (p *Proxy) takeMint(src netip.Addr) bool {
	if p.cfg.LeafMintRate <= 0 {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.gate(src)
	now := time.Now()
	g.tokens = min(float64(p.cfg.LeafMintBurst), g.tokens+now.Sub(g.last).Seconds()*p.cfg.LeafMintRate)
	g.last = now
	if g.tokens < 1 {
		return false
	}
	g.tokens--
	return true
}
