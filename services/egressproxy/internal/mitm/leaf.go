package mitm

import (
	"container/list"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// DefaultLeafCacheSize is the default of --leaf-cache-size: the leaves
// kept, least recently used evicted first. At about 3.5 KiB each (a P-256
// key, the DER certificate and its parsed form; TestLeafMemory) 4,096
// leaves hold some 14 MiB.
const DefaultLeafCacheSize = 4096

// LeafValidity is how long a minted leaf is valid; it is re-minted when
// less than a quarter of that remains.
const LeafValidity = 24 * time.Hour

// Minter mints and caches one leaf per host. The cache is an LRU bounded
// by entry count; concurrent demand for one host mints once (singleflight),
// and no lock is held while a key is generated or a certificate signed.
type Minter struct {
	ca    *CA
	max   int
	group singleflight.Group
	now   func() time.Time

	mu    sync.Mutex
	lru   *list.List // of *entry, most recent first
	byKey map[string]*list.Element

	// minted counts certificates created, for tests and metrics.
	mintedMu sync.Mutex
	minted   int
}

type entry struct {
	host string
	cert *tls.Certificate
}

// NewMinter returns a Minter caching up to maxEntries leaves.
func NewMinter(ca *CA, maxEntries int) *Minter {
	if maxEntries < 1 {
		maxEntries = 1
	}
	return &Minter{ca: ca, max: maxEntries, now: time.Now, lru: list.New(), byKey: map[string]*list.Element{}}
}

// Minted returns how many leaves were created so far.
func (m *Minter) Minted() int {
	m.mintedMu.Lock()
	defer m.mintedMu.Unlock()
	return m.minted
}

// Certificate returns the leaf for host (a canonical host name or IP).
func (m *Minter) Certificate(host string) (*tls.Certificate, error) {
	h, err := canon.CanonicalHost(host)
	if err != nil {
		return nil, err
	}
	key := h.Name
	if c := m.cached(key); c != nil {
		return c, nil
	}
	v, err, _ := m.group.Do(key, func() (any, error) {
		if c := m.cached(key); c != nil {
			return c, nil
		}
		c, err := m.mint(h)
		if err != nil {
			return nil, err
		}
		m.store(key, c)
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

// Cached reports whether host's leaf is in the cache and fresh, so that
// Certificate would return it without minting.
func (m *Minter) Cached(host string) bool {
	h, err := canon.CanonicalHost(host)
	return err == nil && m.cached(h.Name) != nil
}

func (m *Minter) cached(key string) *tls.Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.byKey[key]
	if !ok {
		return nil
	}
	e := el.Value.(*entry)
	if m.now().Add(LeafValidity / 4).After(e.cert.Leaf.NotAfter) {
		m.lru.Remove(el)
		delete(m.byKey, key)
		return nil
	}
	m.lru.MoveToFront(el)
	return e.cert
}

func (m *Minter) store(key string, c *tls.Certificate) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.byKey[key]; ok {
		el.Value.(*entry).cert = c
		m.lru.MoveToFront(el)
		return
	}
	m.byKey[key] = m.lru.PushFront(&entry{host: key, cert: c})
	for m.lru.Len() > m.max {
		old := m.lru.Back()
		m.lru.Remove(old)
		delete(m.byKey, old.Value.(*entry).host)
	}
}

func (m *Minter) mint(h canon.Host) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate leaf key: %w", err)
	}
	now := m.now()
	notAfter := now.Add(LeafValidity)
	if notAfter.After(m.ca.Cert.NotAfter) {
		notAfter = m.ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: h.Name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if h.IsIP() {
		tmpl.IPAddresses = []net.IP{h.IP.AsSlice()}
	} else {
		tmpl.DNSNames = []string{h.Name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.ca.Cert, &key.PublicKey, m.ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign leaf for %s: %w", h.Name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse leaf: %w", err)
	}
	m.mintedMu.Lock()
	m.minted++
	m.mintedMu.Unlock()
	return &tls.Certificate{Certificate: [][]byte{der, m.ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// ErrNoSNI is returned for a ClientHello without a server name.
var ErrNoSNI = errors.New("TLS ClientHello without server name")

// GetCertificate serves tls.Config.GetCertificate.
func (m *Minter) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if hello.ServerName == "" {
		return nil, ErrNoSNI
	}
	return m.Certificate(hello.ServerName)
}

// TLSConfig is the server configuration sandbox connections are
// terminated with: minted leaves, HTTP/2 or HTTP/1.1 by ALPN.
func (m *Minter) TLSConfig() *tls.Config {
	return &tls.Config{
		GetCertificate: m.GetCertificate,
		NextProtos:     []string{"h2", "http/1.1"},
		MinVersion:     tls.VersionTLS12,
	}
}
