// Package decisionlisten opens the decision service's listener so that only
// the egress proxy can speak to it: a unix socket that only the proxy's user
// may open and whose peers' credentials are checked on accept, or mutual TLS
// that admits only the proxy's certificate, or (opted into) plain TCP.
package decisionlisten

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sandpit-run/sandpit/services/daemon/grpcserve"
)

// UnixScheme prefixes a unix socket's path in an address.
const UnixScheme = "unix://"

// Reasons a connection is refused, the reason label's values.
const (
	reasonPeerUID       = "peer_uid"
	reasonNoCertificate = "no_certificate"
	reasonUntrusted     = "untrusted_certificate"
	reasonIdentity      = "wrong_identity"
)

// Config says where the decision service listens and whom it admits.
type Config struct {
	// Address is unix:///path, or host:port for mutual TLS (or plain TCP
	// with InsecureTCP).
	Address string
	// ProxyUID owns the unix socket and is the only peer uid accepted on it.
	ProxyUID uint32
	// TLS admits, on a TCP address, only a client certificate from
	// ClientCA naming Identity.
	TLS TLSFiles
	// InsecureTCP serves a TCP address in the clear, to any local process;
	// for tests that put a relay between proxy and executor.
	InsecureTCP bool
}

// TLSFiles are the executor's side of mutual TLS on the decision port.
type TLSFiles struct {
	CertFile, KeyFile string
	// ClientCAFile holds the CAs the proxy's certificate must chain to.
	ClientCAFile string
	// Identity is what the proxy's certificate must name: one of its DNS
	// or URI SANs, or its subject CN.
	Identity string
}

// set reports whether any TLS file or identity is given.
func (f TLSFiles) set() bool {
	return f.CertFile != "" || f.KeyFile != "" || f.ClientCAFile != "" || f.Identity != ""
}

// Validate checks that c names one way to listen, completely.
func (c Config) Validate() error {
	if path, ok := strings.CutPrefix(c.Address, UnixScheme); ok {
		switch {
		case !filepath.IsAbs(path):
			return fmt.Errorf("decision-listen %q: want unix:///absolute/path", c.Address)
		case len(path) >= len(unix.RawSockaddrUnix{}.Path):
			return fmt.Errorf("decision-listen %q: a unix socket path has at most %d bytes", c.Address, len(unix.RawSockaddrUnix{}.Path)-1)
		case c.TLS.set() || c.InsecureTCP:
			return errors.New("decision-listen: a unix socket takes no TLS flags and no decision-insecure-tcp (the peer's uid is checked)")
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		return fmt.Errorf("decision-listen %q: want unix:///path or host:port: %w", c.Address, err)
	}
	f := c.TLS
	switch {
	case c.InsecureTCP && f.set():
		return errors.New("decision-listen: decision-insecure-tcp and the decision TLS flags exclude each other")
	case c.InsecureTCP:
		return nil
	case f.CertFile == "" || f.KeyFile == "" || f.ClientCAFile == "" || f.Identity == "":
		return fmt.Errorf("decision-listen %q is TCP: give decision-tls-cert, decision-tls-key, decision-client-ca and decision-proxy-identity (mutual TLS), or decision-insecure-tcp", c.Address)
	}
	return nil
}

// Listener is the decision service's listener and the server options that
// go with it.
type Listener struct {
	net.Listener
	// ServerOptions carry the TLS credentials on a mutual-TLS address.
	ServerOptions []grpc.ServerOption
}

// Target is the gRPC target a proxy dials to reach l.
func (l *Listener) Target() string {
	if a, ok := l.Addr().(*net.UnixAddr); ok {
		return UnixScheme + a.Name
	}
	return l.Addr().String()
}

// Listen opens the listener c describes. Refused connections are logged
// and counted on reg (nil for none).
func Listen(c Config, reg prometheus.Registerer, log *slog.Logger) (*Listener, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	refused := newRefusals(reg)
	if path, ok := strings.CutPrefix(c.Address, UnixScheme); ok {
		ln, err := listenUnix(path, c.ProxyUID)
		if err != nil {
			return nil, err
		}
		return &Listener{Listener: &peerCredListener{Listener: ln, uid: c.ProxyUID, refused: refused, log: log}}, nil
	}
	var opts []grpc.ServerOption
	if !c.InsecureTCP {
		tc, err := serverTLS(c.TLS, refused, log)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	} else {
		log.Warn("the decision service listens on plain TCP: any local process can open the Decide stream", "decision_listen", c.Address)
	}
	ln, err := net.Listen("tcp", c.Address)
	if err != nil {
		return nil, fmt.Errorf("listen decisions: %w", err)
	}
	return &Listener{Listener: ln, ServerOptions: opts}, nil
}

// listenUnix binds path as a socket that only uid (and root) may connect
// to: mode 0600, owned by uid. A socket a previous executor left there is
// replaced; one that still answers, or anything that is not a socket, is
// an error.
func listenUnix(path string, uid uint32) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, fmt.Errorf("listen decisions: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("listen decisions: %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen decisions: %s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen decisions: remove stale socket: %w", err)
		}
	}
	// Between bind and chmod another user may connect; the peer check
	// refuses it. (The umask is the process's, not this goroutine's, so it
	// is left alone.)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen decisions: %w", err)
	}
	// Closing the listener removes the socket file.
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen decisions: %w", err)
	}
	if err := os.Lchown(path, int(uid), -1); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen decisions: give the socket to the proxy's user: %w", err)
	}
	return ln, nil
}

// peerCredListener accepts only connections whose peer (SO_PEERCRED) runs
// as uid; the others are closed before gRPC sees them.
type peerCredListener struct {
	net.Listener
	uid     uint32
	refused *refusals
	log     *slog.Logger
}

func (l *peerCredListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(c)
		if err == nil && cred.Uid == l.uid {
			return c, nil
		}
		// Counted and logged before the close, so that whoever sees the
		// close also sees the count.
		if err != nil {
			l.log.Warn("decision connection refused: its peer's credentials are unknown", "error", err)
		} else {
			l.log.Warn("decision connection refused: its peer is not the egress proxy's user", "peer_uid", cred.Uid, "peer_pid", cred.Pid, "proxy_uid", l.uid)
		}
		l.refused.inc(reasonPeerUID)
		c.Close()
	}
}

// peerCred reads the credentials of a unix connection's peer.
func peerCred(c net.Conn) (*unix.Ucred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("not a unix connection: %T", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, credErr
}

// serverTLS is the decision port's TLS: a client certificate is asked for
// and checked here rather than by crypto/tls, so that every refusal (none,
// another CA's, another identity's) is logged and counted alike.
func serverTLS(f TLSFiles, refused *refusals, log *slog.Logger) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("decision-tls-cert: %w", err)
	}
	pool := x509.NewCertPool()
	if err := grpcserve.AppendCertsFile(pool, f.ClientCAFile, "decision-client-ca"); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			reason, err := verifyProxy(cs.PeerCertificates, pool, f.Identity)
			if err != nil {
				log.Warn("decision connection refused", "reason", reason, "error", err)
				refused.inc(reason)
			}
			return err
		},
	}, nil
}

// verifyProxy checks that certs chain to roots for client authentication
// and that the leaf names identity; on failure it says why, as a reason
// label.
func verifyProxy(certs []*x509.Certificate, roots *x509.CertPool, identity string) (string, error) {
	if len(certs) == 0 {
		return reasonNoCertificate, errors.New("no client certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	leaf := certs[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return reasonUntrusted, fmt.Errorf("client certificate: %w", err)
	}
	if !names(leaf, identity) {
		return reasonIdentity, fmt.Errorf("client certificate %q does not name the proxy's identity %q", leaf.Subject.CommonName, identity)
	}
	return "", nil
}

// names reports whether c names identity in a DNS or URI SAN or its CN.
func names(c *x509.Certificate, identity string) bool {
	if c.Subject.CommonName == identity {
		return true
	}
	for _, d := range c.DNSNames {
		if strings.EqualFold(d, identity) {
			return true
		}
	}
	for _, u := range c.URIs {
		if u.String() == identity {
			return true
		}
	}
	return false
}

// refusals counts refused connections by reason; a nil *refusals counts
// nothing.
type refusals struct{ c *prometheus.CounterVec }

func newRefusals(reg prometheus.Registerer) *refusals {
	if reg == nil {
		return nil
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sandpit_decision_connections_refused_total",
		Help: "Connections to the decision service refused because they were not the egress proxy's, by reason (peer_uid, no_certificate, untrusted_certificate, wrong_identity).",
	}, []string{"reason"})
	for _, r := range []string{reasonPeerUID, reasonNoCertificate, reasonUntrusted, reasonIdentity} {
		c.WithLabelValues(r)
	}
	reg.MustRegister(c)
	return &refusals{c}
}

func (r *refusals) inc(reason string) {
	if r != nil {
		r.c.WithLabelValues(reason).Inc()
	}
}
