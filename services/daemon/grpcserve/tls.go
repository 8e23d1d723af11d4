package grpcserve

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// TLSFiles name the PEM files of a server's TLS.
type TLSFiles struct {
	// CertFile (the certificate chain, leaf first) and KeyFile are read
	// again at each new connection's handshake: a changed pair serves the
	// connections after it, a pair that does not load leaves the last good
	// one in force.
	CertFile, KeyFile string
	// ClientCAFile, when set, makes the server require a client
	// certificate signed by one of its CAs (mTLS); read once, at start.
	ClientCAFile string
}

// Enabled reports whether f asks for TLS at all.
func (f TLSFiles) Enabled() bool { return f.CertFile != "" || f.KeyFile != "" || f.ClientCAFile != "" }

// Check reports a configuration that cannot serve: a certificate without
// its key or the other way round, or a client CA without TLS.
func (f TLSFiles) Check() error {
	if (f.CertFile == "") != (f.KeyFile == "") {
		return errors.New("tls-cert and tls-key go together")
	}
	if f.ClientCAFile != "" && f.CertFile == "" {
		return errors.New("tls-client-ca needs tls-cert and tls-key")
	}
	return nil
}

// ServerCredentials returns TLS credentials for f (TLS 1.2 or later), or
// an error if the files do not load now.
func ServerCredentials(f TLSFiles, log *slog.Logger) (credentials.TransportCredentials, error) {
	if err := f.Check(); err != nil {
		return nil, err
	}
	kp := &keyPair{certFile: f.CertFile, keyFile: f.KeyFile, log: log}
	if _, err := kp.get(nil); err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.get}
	if f.ClientCAFile != "" {
		pool := x509.NewCertPool()
		if err := AppendCertsFile(pool, f.ClientCAFile, "tls client CA"); err != nil {
			return nil, err
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(cfg), nil
}

// keyPair is a certificate and key that follow their files. Reading two
// small files at each handshake costs little next to the handshake, and
// catches every change however the files are replaced (in place, by
// rename, by a mounted secret's symlink swap).
type keyPair struct {
	certFile, keyFile string
	log               *slog.Logger

	mu sync.Mutex
	// cert is the last good pair; certPEM and keyPEM are the files'
	// contents when last read, good or not, so that a broken pair is
	// logged once, not at every handshake.
	cert            *tls.Certificate
	certPEM, keyPEM []byte
}

// get is tls.Config.GetCertificate: the files' pair if they changed and
// load, else the last good one.
func (k *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	certPEM, err := os.ReadFile(k.certFile)
	var keyPEM []byte
	if err == nil {
		keyPEM, err = os.ReadFile(k.keyFile)
	}
	if err == nil && bytes.Equal(certPEM, k.certPEM) && bytes.Equal(keyPEM, k.keyPEM) {
		return k.current()
	}
	var cert tls.Certificate
	if err == nil {
		cert, err = tls.X509KeyPair(certPEM, keyPEM)
	}
	if err != nil {
		err = fmt.Errorf("tls certificate %s and key %s: %w", k.certFile, k.keyFile, err)
		if k.cert == nil {
			return nil, err
		}
		if !bytes.Equal(certPEM, k.certPEM) || !bytes.Equal(keyPEM, k.keyPEM) {
			k.log.Error("tls certificate or key changed but does not load; keeping the previous pair", "error", err)
			k.certPEM, k.keyPEM = certPEM, keyPEM
		}
		return k.cert, nil
	}
	if k.cert != nil {
		k.log.Info("tls certificate reloaded", "path", k.certFile, "subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter)
	}
	k.cert, k.certPEM, k.keyPEM = &cert, certPEM, keyPEM
	return k.cert, nil
}

func (k *keyPair) current() (*tls.Certificate, error) {
	if k.cert == nil {
		return nil, errors.New("no tls certificate loaded")
	}
	return k.cert, nil
}

// ClientIdentity is who a verified client certificate names.
type ClientIdentity struct {
	// CommonName is the leaf's subject CN.
	CommonName string
	// URIs are its URI SANs (a SPIFFE ID, say).
	URIs []string
}

// String is the identity in one word for logs: the first URI SAN, else
// the common name.
func (c ClientIdentity) String() string {
	if len(c.URIs) > 0 {
		return c.URIs[0]
	}
	return c.CommonName
}

// VerifiedClient returns the identity of the call's client certificate
// when the server verified it against its client CA (mTLS); false on a
// plaintext or server-only TLS connection.
func VerifiedClient(ctx context.Context) (ClientIdentity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ClientIdentity{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return ClientIdentity{}, false
	}
	leaf := info.State.VerifiedChains[0][0]
	id := ClientIdentity{CommonName: leaf.Subject.CommonName}
	for _, u := range leaf.URIs {
		id.URIs = append(id.URIs, u.String())
	}
	return id, true
}

// clientFields are the log fields of a call's verified client.
func clientFields(ctx context.Context) logging.Fields {
	if id, ok := VerifiedClient(ctx); ok {
		return logging.Fields{"client_identity", id.String()}
	}
	return nil
}

// AppendCertsFile adds the PEM certificates of the file at path to pool;
// what names the file (a flag) in errors. A file with none is an error.
func AppendCertsFile(pool *x509.CertPool, path, what string) error {
	pem, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s %s: no PEM certificate in it", what, path)
	}
	return nil
}
