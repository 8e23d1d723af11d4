package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"time"
)

// Upstream bounds, the defaults of --upstream-response-header-timeout and
// --upstream-idle-timeout.
const (
	// DefaultResponseHeaderTimeout is how long an allowed request waits
	// for the upstream's response head once it is sent. It is long
	// because an API may answer only when its work is done (a model's
	// whole completion); a sandbox that goes away cancels its request
	// long before.
	DefaultResponseHeaderTimeout = 5 * time.Minute
	// DefaultUpstreamIdleTimeout is how long an idle upstream connection
	// is kept for reuse.
	DefaultUpstreamIdleTimeout = 90 * time.Second
)

// NewTransport returns the upstream transport: every connection through
// dial, upstream certificates verified against roots (nil: the system
// pool), HTTP/2 when the upstream offers it, no environment proxy, no
// transparent decompression, no redirects (a RoundTripper never follows
// them), and the default upstream bounds (the caller may change them).
func NewTransport(dial func(ctx context.Context, network, addr string) (net.Conn, error), roots *x509.CertPool) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		DisableCompression:    true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       DefaultUpstreamIdleTimeout,
		ResponseHeaderTimeout: DefaultResponseHeaderTimeout,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: 0,
	}
}
