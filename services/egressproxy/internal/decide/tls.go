package decide

import (
	"context"
	"net/netip"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	"github.com/sandpit-run/sandpit/services/daemon/bound"
)

// TLSQuestion is the server name of a sandbox's TLS handshake, asked about
// before a leaf is minted for it.
type TLSQuestion struct {
	SourceIP netip.Addr
	// Name is the canonical server name.
	Name string
	// Port is the original destination port.
	Port uint16
}

func (q TLSQuestion) message(id uint64) *egressv1.DecideRequest {
	return question(id, &egressv1.Question{Kind: &egressv1.Question_Tls{Tls: &egressv1.TlsServerName{
		SourceIp: addrString(q.SourceIP), Name: bound.String(q.Name, MaxHostBytes), Port: uint32(q.Port),
	}}})
}

// AskTLS asks whether some rule of the source's execution could allow
// https to a server name, like AskHTTP: it always returns a verdict, the
// fail-closed deny when the executor does not answer. It counts against
// the source's HTTP limits, as the connection's requests do.
func (c *Client) AskTLS(ctx context.Context, q TLSQuestion) (Verdict, error) {
	return c.askWithin(ctx, c.http, q.SourceIP, kindTLS, q.message)
}
