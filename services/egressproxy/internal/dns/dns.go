// Package dns answers the sandboxes' DNS queries from the policy alone:
// names the decider denies get NXDOMAIN, the others an address that routes
// to the proxy. Nothing is ever forwarded to a real resolver.
package dns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"

	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/policy"
	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// Decider answers questions about queries; AskDNS always returns a
// verdict (a deny when it fails).
type Decider interface {
	AskDNS(ctx context.Context, q decide.DNSQuestion) (decide.Verdict, error)
}

// TTL of allowed answers: short, so a policy change is seen soon.
const TTL = 30

// Handler is a dns.Handler.
type Handler struct {
	Decider Decider
	// AnswerIP is the IPv4 address allowed names resolve to.
	AnswerIP netip.Addr
	// Metrics, if set, count the queries by decision.
	Metrics *Metrics
	Log     *slog.Logger
}

// ServeDNS answers one query.
func (h *Handler) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	m.RecursionAvailable = true
	defer func() { _ = w.WriteMsg(m) }()
	if q.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeNotImplemented
		return
	}
	if len(q.Question) != 1 || q.Question[0].Qclass != dns.ClassINET {
		m.Rcode = dns.RcodeFormatError
		return
	}
	question := q.Question[0]
	var src netip.Addr
	if ap, err := netip.ParseAddrPort(w.RemoteAddr().String()); err == nil {
		src = ap.Addr().Unmap()
	}
	qtype := dns.TypeToString[question.Qtype]
	if qtype == "" {
		qtype = dns.Type(question.Qtype).String()
	}
	host, err := canon.CanonicalHost(question.Name)
	name := strings.ToLower(strings.TrimSuffix(question.Name, "."))
	if err == nil {
		name = host.Name
	}
	resp, askErr := h.Decider.AskDNS(context.Background(), decide.DNSQuestion{SourceIP: src, Name: name, Type: qtype})
	decision, rule := policy.DecisionLabel(resp.Decision), resp.RuleID
	if err != nil || host.IsIP() {
		// An IP literal needs no lookup, and a name that is not one
		// cannot be answered for: NXDOMAIN, whatever the policy says.
		decision, rule = "deny", "proxy"
	}
	h.Metrics.query(decision)
	h.Log.Info("dns query", "source_ip", src.String(), "name", name, "type", qtype, "decision", decision,
		"rule_id", rule, "execution_id", resp.ExecutionID, "error", askErr)
	if decision == "deny" {
		m.Rcode = dns.RcodeNameError
		return
	}
	if question.Qtype == dns.TypeA {
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL},
			A:   net.IP(h.AnswerIP.AsSlice()),
		})
	}
	// AAAA and every other type: NOERROR without records (IPv6 is off in
	// sandboxes, and the only thing a name may do is route to the proxy).
}

// Serve answers on a UDP packet connection and a TCP listener until ctx
// ends.
func Serve(ctx context.Context, h dns.Handler, pc net.PacketConn, ln net.Listener) error {
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	errc := make(chan error, 2)
	go func() { errc <- udp.ActivateAndServe() }()
	go func() { errc <- tcp.ActivateAndServe() }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	_ = udp.Shutdown()
	_ = tcp.Shutdown()
	return err
}
