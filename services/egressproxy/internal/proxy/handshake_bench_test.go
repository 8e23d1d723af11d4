package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decidetest"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/mitm"
)

// BenchmarkNewTLSConnection measures what a sandbox's new TLS connection
// costs the proxy up to the end of the handshake, the leaf already cached:
// the ClientHello read, the server-name gate (its answer cached after the
// first connection) and the handshake, with the decider a real gRPC stream
// on loopback.
func BenchmarkNewTLSConnection(b *testing.B) {
	_, handshake := benchProxy(b)
	handshake() // mint the leaf
	b.ResetTimer()
	for b.Loop() {
		handshake()
	}
}

// benchProxy serves a proxy whose decider is decidetest over a real gRPC
// stream, and returns it with a function making one TLS handshake with it
// for api.stripe.test.
func benchProxy(b *testing.B) (*Proxy, func()) {
	b.Helper()
	dec := decidetest.Start(b, decidetest.StripeLike)
	conn, err := grpc.NewClient(dec.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	client, err := decide.New(conn, decide.Config{Hello: testHello, Timeout: 2 * time.Second, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { client.Run(ctx) })
	ca, err := mitm.NewCA("bench CA")
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p := New(Config{
		Minter:      mitm.NewMinter(ca, 16),
		Decider:     client,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return netip.MustParseAddrPort("203.0.113.10:443"), nil },
		Log:         slog.New(slog.DiscardHandler),
	})
	wg.Go(func() { _ = p.Serve(ctx, ln) })
	for deadline := time.Now().Add(5 * time.Second); !client.Connected(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("decide stream never opened")
		}
	}
	cfg := &tls.Config{ServerName: "api.stripe.test", RootCAs: roots, NextProtos: []string{"http/1.1"}}
	handshake := func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	return p, handshake
}
