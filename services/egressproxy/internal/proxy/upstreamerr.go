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
	upstreamTLSCert     = "tls_certificate"
	upstreamTLSError    = "tls_error"
	upstreamClosed      = "connection_closed"
	upstreamOther       = "upstream_error"
	// Not the upstream's failure as such: its response to a request
	// carrying a secret came compressed, so the value could not be
	// scrubbed from it.
	upstreamUnscrubbable = "unscrubbable_response"
)

// upstreamErrorMessages are the only words of an upstream failure a
// sandbox sees, in a 502 body, and the executor, in the request's outcome:
// fixed, naming no address, port or library error. The error itself goes
// to the proxy's log only.
var upstreamErrorMessages = map[string]string{
	upstreamDNSFailure:   "sandpit could not resolve the upstream's name",
	upstreamRefused:      "sandpit refuses to connect to the upstream's address (private, special-purpose or this host's own)",
	upstreamConnRefused:  "the upstream refused the connection",
	upstreamUnreachable:  "the upstream is unreachable",
	upstreamTimeout:      "the upstream did not answer in time",
	upstreamTLSCert:      "the upstream's TLS certificate is not trusted",
	upstreamTLSError:     "TLS with the upstream failed",
	upstreamClosed:       "the upstream closed the connection",
	upstreamOther:        "sandpit could not reach the upstream",
	upstreamUnscrubbable: "the upstream compressed its response to a request carrying a secret; sandpit returns such a response only as it can scrub it, uncompressed",
}

// errSandboxClosed is wrapped by the error of an exchange that failed on
// the sandbox's side: writing the response to it, or reading the body it
// sends.
var errSandboxClosed = errors.New("sandbox closed the connection")

// outcomeError is what an outcome reports for the error that ended an
// allowed request: a fixed text, never the error's words. class is the
// upstream failure's class, empty when the upstream did not fail.
func outcomeError(err error) (text, class string) {
	var end relayEnd
	switch {
	case err == nil:
		return "", ""
	case errors.As(err, &end):
		return string(end), ""
	case errors.Is(err, errBodyTooLarge):
		return errBodyTooLarge.Error(), ""
	case errors.Is(err, errResponseTooLarge):
		return errResponseTooLarge.Error(), ""
	case errors.Is(err, errSandboxClosed), errors.Is(err, context.Canceled):
		return errSandboxClosed.Error(), ""
	}
	class = upstreamErrorClass(err)
	return upstreamErrorMessages[class], class
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
	case errors.Is(err, errUnscrubbable):
		return upstreamUnscrubbable
	case errors.Is(err, dialer.ErrRefused):
		return upstreamRefused
	case errors.Is(err, dialer.ErrNotResolved), errors.As(err, &dnsErr):
		return upstreamDNSFailure
	case errors.Is(err, syscall.ECONNREFUSED):
		return upstreamConnRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return upstreamUnreachable
	case errors.As(err, &verifyErr), errors.As(err, &authErr), errors.As(err, &hostErr), errors.As(err, &certErr):
		return upstreamTLSCert
	case errors.As(err, &recErr), errors.As(err, &alertErr):
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
