package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dialer"
)

// Classes of upstream failure, the error.code of a 502 body.
const (
	upstreamDNSFailure  = "dns_failure"
	upstreamRefused     = "refused"
	upstreamConnRefused = "connection_refused"
	upstreamUnreachable = "unreachable"
	upstreamTimeout     = "timeout"
	upstreamTLSError    = "tls_error"
	upstreamClosed      = "connection_closed"
	upstreamOther       = "upstream_error"
)

// upstreamErrorMessages are the only words of an upstream failure a
// sandbox sees: fixed, naming no address, port or library error.
var upstreamErrorMessages = map[string]string{
	upstreamDNSFailure:  "sandpit could not resolve the upstream's name",
	upstreamRefused:     "sandpit refuses to connect to the upstream's address (private, special-purpose or this host's own)",
	upstreamConnRefused: "the upstream refused the connection",
	upstreamUnreachable: "the upstream is unreachable",
	upstreamTimeout:     "the upstream did not answer in time",
	upstreamTLSError:    "TLS with the upstream failed",
	upstreamClosed:      "the upstream closed the connection",
	upstreamOther:       "sandpit could not reach the upstream",
}

// upstreamErrorClass sorts a failed round trip into one class.
func upstreamErrorClass(err error) string {
	var (
		dnsErr    *net.DNSError
		netErr    net.Error
		recErr    tls.RecordHeaderError
		alertErr  tls.AlertError
		verifyErr *tls.CertificateVerificationError
		authErr   x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		certErr   x509.CertificateInvalidError
	)
	switch {
	case errors.Is(err, dialer.ErrRefused):
		return upstreamRefused
	case errors.Is(err, dialer.ErrNotResolved), errors.As(err, &dnsErr):
		return upstreamDNSFailure
	case errors.Is(err, syscall.ECONNREFUSED):
		return upstreamConnRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return upstreamUnreachable
	case errors.As(err, &recErr), errors.As(err, &alertErr), errors.As(err, &verifyErr),
		errors.As(err, &authErr), errors.As(err, &hostErr), errors.As(err, &certErr):
		return upstreamTLSError
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT),
		errors.As(err, &netErr) && netErr.Timeout():
		return upstreamTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE):
		return upstreamClosed
	}
	return upstreamOther
}
