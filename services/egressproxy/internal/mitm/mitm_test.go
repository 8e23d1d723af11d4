package mitm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func newTestCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestLeafVerifiesWithOneSAN(t *testing.T) {
	ca := newTestCA(t)
	m := NewMinter(ca, 10)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)

	c, err := m.Certificate("API.Stripe.com.")
	if err != nil {
		t.Fatal(err)
	}
	leaf := c.Leaf
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "api.stripe.com" || len(leaf.IPAddresses) != 0 {
		t.Fatalf("SANs = %v %v, want exactly api.stripe.com", leaf.DNSNames, leaf.IPAddresses)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "api.stripe.com", Roots: pool}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "evil.com", Roots: pool}); err == nil {
		t.Fatal("leaf verifies for another name")
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("leaf key is %T, want ECDSA P-256", leaf.PublicKey)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d > LeafValidity+2*time.Hour {
		t.Fatalf("leaf valid for %v", d)
	}

	ipc, err := m.Certificate("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if len(ipc.Leaf.IPAddresses) != 1 || !ipc.Leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || len(ipc.Leaf.DNSNames) != 0 {
		t.Fatalf("IP leaf SANs = %v %v", ipc.Leaf.DNSNames, ipc.Leaf.IPAddresses)
	}
}

func TestConcurrentDemandMintsOnce(t *testing.T) {
	m := NewMinter(newTestCA(t), 10)
	var wg sync.WaitGroup
	certs := make([]*tls.Certificate, 50)
	for i := range certs {
		wg.Go(func() {
			c, err := m.Certificate("api.example.com")
			if err != nil {
				t.Error(err)
			}
			certs[i] = c
		})
	}
	wg.Wait()
	if got := m.Minted(); got != 1 {
		t.Fatalf("minted %d leaves, want 1", got)
	}
	for _, c := range certs {
		if c != certs[0] {
			t.Fatal("callers got different certificates")
		}
	}
}

func TestCacheBoundedAndRefreshed(t *testing.T) {
	m := NewMinter(newTestCA(t), 2)
	for _, h := range []string{"a.test", "b.test", "c.test"} {
		if _, err := m.Certificate(h); err != nil {
			t.Fatal(err)
		}
	}
	if m.lru.Len() != 2 {
		t.Fatalf("cache holds %d, want 2", m.lru.Len())
	}
	if _, err := m.Certificate("a.test"); err != nil { // evicted: minted again
		t.Fatal(err)
	}
	if m.Minted() != 4 {
		t.Fatalf("minted %d, want 4", m.Minted())
	}
	// Near expiry: re-minted.
	start := time.Now()
	m.now = func() time.Time { return start.Add(LeafValidity - time.Hour) }
	if _, err := m.Certificate("a.test"); err != nil {
		t.Fatal(err)
	}
	if m.Minted() != 5 {
		t.Fatalf("minted %d, want 5 after expiry", m.Minted())
	}
}

func TestLoadOrCreateCAPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("CA changed across loads")
	}
	if _, err := NewMinter(b, 1).Certificate("x.test"); err != nil {
		t.Fatalf("loaded CA cannot sign: %v", err)
	}
}

func TestTLSHandshake(t *testing.T) {
	ca := newTestCA(t)
	m := NewMinter(ca, 10)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "api.stripe.test", RootCAs: pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN = %q", p)
	}
}
