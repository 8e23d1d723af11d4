package decide

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sandpit-run/sandpit/services/daemon/grpcserve"
)

// TransportConfig says how the proxy reaches the executor's decision
// service: a unix socket (unix:///path; the executor checks the proxy's
// uid), mutual TLS over TCP, or plain TCP when opted into.
type TransportConfig struct {
	// Target is the gRPC target: unix:///path or host:port.
	Target string
	// CertFile and KeyFile are the proxy's client certificate, CAFile the
	// CAs the executor's certificate must chain to.
	CertFile, KeyFile, CAFile string
	// ServerName, when set, is the name the executor's certificate must
	// carry instead of the target's host.
	ServerName string
	// InsecureTCP dials a TCP target in the clear; for tests only.
	InsecureTCP bool
}

// unix reports whether the target is a unix socket.
func (c TransportConfig) unix() bool { return strings.HasPrefix(c.Target, "unix:") }

func (c TransportConfig) tls() bool {
	return c.CertFile != "" || c.KeyFile != "" || c.CAFile != "" || c.ServerName != ""
}

// Validate checks that c names one way to reach the executor, completely.
func (c TransportConfig) Validate() error {
	switch {
	case c.unix() && (c.tls() || c.InsecureTCP):
		return errors.New("decider: a unix socket takes no TLS flags and no decider-insecure-tcp")
	case c.unix():
		return nil
	case c.InsecureTCP && c.tls():
		return errors.New("decider: decider-insecure-tcp and the decider TLS flags exclude each other")
	case c.InsecureTCP:
		return nil
	case c.CertFile == "" || c.KeyFile == "" || c.CAFile == "":
		return fmt.Errorf("decider %q is TCP: give decider-tls-cert, decider-tls-key and decider-ca (mutual TLS), or decider-insecure-tcp", c.Target)
	}
	return nil
}

// Credentials are the transport credentials c asks for.
func (c TransportConfig) Credentials() (credentials.TransportCredentials, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.unix() || c.InsecureTCP {
		return insecure.NewCredentials(), nil
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("decider-tls-cert: %w", err)
	}
	roots := x509.NewCertPool()
	if err := grpcserve.AppendCertsFile(roots, c.CAFile, "decider-ca"); err != nil {
		return nil, err
	}
	return credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   c.ServerName,
	}), nil
}
