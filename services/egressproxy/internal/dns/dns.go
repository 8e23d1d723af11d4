// Package dns answers the sandboxes' DNS queries from the policy alone:
// names the decider denies get NXDOMAIN, the others an address that routes
// to the proxy. Nothing is ever forwarded to a real resolver.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

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
	if errors.Is(askErr, decide.ErrRateLimited) {
		// Refused at once, and logged by the limiter, sampled.
		h.Metrics.query("deny")
		m.Rcode = dns.RcodeRefused
		return
	}
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

// Workers is how many UDP queries are answered at once by default;
// QueueLen is how many more wait. A packet arriving with the queue full
// is answered SERVFAIL by the reader at once (README: Limits).
const (
	Workers  = 64
	QueueLen = 1024
)

// Serve answers on a UDP packet connection and a TCP listener until ctx
// ends; UDP queries are answered by a pool of workers (0 means Workers),
// not a goroutine per packet.
func Serve(ctx context.Context, h dns.Handler, pc net.PacketConn, ln net.Listener, workers int) error {
	if workers <= 0 {
		workers = Workers
	}
	tcp := &dns.Server{Listener: ln, Handler: h}
	errc := make(chan error, 2)
	go func() { errc <- tcp.ActivateAndServe() }()
	udpDone := make(chan struct{})
	go func() { defer close(udpDone); errc <- serveUDP(h, pc, workers) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	_ = pc.Close()
	<-udpDone
	_ = tcp.Shutdown()
	return err
}

type packet struct {
	msg  *dns.Msg
	from net.Addr
}

// serveUDP reads queries until pc is closed, hands them to workers and
// answers SERVFAIL itself when they are all busy and the queue is full.
func serveUDP(h dns.Handler, pc net.PacketConn, workers int) error {
	jobs := make(chan packet, QueueLen)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for p := range jobs {
				h.ServeDNS(newUDPWriter(pc, p.from, p.msg), p.msg)
			}
		})
	}
	defer wg.Wait()
	defer close(jobs)
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("dns read: %w", err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil || m.Response {
			continue // not a query: nothing to answer
		}
		select {
		case jobs <- packet{msg: m, from: from}:
		default:
			r := new(dns.Msg)
			r.SetRcode(m, dns.RcodeServerFailure)
			_ = newUDPWriter(pc, from, m).WriteMsg(r)
		}
	}
}

// udpWriter is the dns.ResponseWriter of one UDP query.
type udpWriter struct {
	pc   net.PacketConn
	to   net.Addr
	size int // the most bytes the client takes over UDP
}

func newUDPWriter(pc net.PacketConn, to net.Addr, q *dns.Msg) *udpWriter {
	// 512 bytes unless the query's EDNS0 says more.
	size := dns.MinMsgSize
	if o := q.IsEdns0(); o != nil {
		size = max(size, int(o.UDPSize()))
	}
	return &udpWriter{pc: pc, to: to, size: size}
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.pc.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return w.to }
func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	// Truncate sets TC on an answer too big, so that the client asks
	// again over TCP.
	m.Truncate(w.size)
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *udpWriter) Write(b []byte) (int, error) { return w.pc.WriteTo(b, w.to) }
func (w *udpWriter) Close() error                { return nil }
func (w *udpWriter) TsigStatus() error           { return nil }
func (w *udpWriter) TsigTimersOnly(bool)         {}
func (w *udpWriter) Hijack()                     {}
