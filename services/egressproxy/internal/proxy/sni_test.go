package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// clientHello builds a minimal TLS 1.2 ClientHello record naming sni, as
// Node sends one for a URL whose host ends with a dot (Go's client would
// strip the dot).
func clientHello(sni string) []byte {
	u16 := func(n int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(n)) }
	name := append(append([]byte{0}, u16(len(sni))...), sni...)
	list := append(u16(len(name)), name...)
	ext := append(append([]byte{0, 0}, u16(len(list))...), list...)
	var body []byte
	body = append(body, 3, 3)
	body = append(body, make([]byte, 32)...)
	body = append(body, 0)                // session id
	body = append(body, 0, 2, 0xc0, 0x2f) // TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
	body = append(body, 1, 0)             // null compression
	body = append(body, u16(len(ext))...)
	body = append(body, ext...)
	hs := append([]byte{1, 0, byte(len(body) >> 8), byte(len(body))}, body...)
	return append(append([]byte{0x16, 3, 1}, u16(len(hs))...), hs...)
}

func TestRawServerName(t *testing.T) {
	// A real ClientHello from crypto/tls, for the parser's sake.
	var buf bytes.Buffer
	c := tls.Client(writeOnlyConn{w: &buf}, &tls.Config{ServerName: "api.example.com"})
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_ = c.Handshake() // fails at the first read; the hello is written
	tests := []struct {
		name  string
		hello []byte
		want  string
		ok    bool
	}{
		{"crypto/tls", buf.Bytes(), "api.example.com", true},
		{"trailing dot", clientHello("API.EXAMPLE.COM."), "API.EXAMPLE.COM.", true},
		{"split over two records", splitRecord(clientHello("a.test."), 20), "a.test.", true},
		{"truncated", clientHello("a.test.")[:50], "", false},
		{"not a handshake", []byte("GET / HTTP/1.1\r\n"), "", false},
		{"empty", nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := rawServerName(tt.hello)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("rawServerName = %q, %v; want %q, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// splitRecord splits a one-record hello into two records, the first with
// n bytes of the handshake.
func splitRecord(rec []byte, n int) []byte {
	hs := rec[5:]
	r1 := append([]byte{0x16, 3, 1, 0, byte(n)}, hs[:n]...)
	rest := hs[n:]
	r2 := append([]byte{0x16, 3, 1, byte(len(rest) >> 8), byte(len(rest))}, rest...)
	return append(r1, r2...)
}

// TestTrailingDotSNIRefusedWithReason: crypto/tls cannot terminate a hello
// whose server name ends with a dot; the proxy refuses it saying so, and
// which name to use, rather than calling it malformed.
func TestTrailingDotSNIRefusedWithReason(t *testing.T) {
	dec := &gateDecider{}
	e := startPlain(t, Config{Decider: dec}, "127.0.0.1:1")
	c := e.dialFrom(t, "127.0.0.1")
	if _, err := c.Write(clientHello("API.EXAMPLE.COM.")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read: %v", err)
	}
	waitFor(t, "the refusal", func() bool { return len(dec.all()) == 1 })
	r := dec.all()[0]
	if !strings.Contains(r.Reason, `"API.EXAMPLE.COM." ends with a dot`) || !strings.Contains(r.Reason, `use "api.example.com"`) {
		t.Fatalf("reason %q, want it to name the dot and the canonical name", r.Reason)
	}
	if got := len(dec.all()); got != 1 {
		t.Fatalf("%d refusals", got)
	}
}

type writeOnlyConn struct {
	net.Conn
	w io.Writer
}

func (c writeOnlyConn) Write(b []byte) (int, error)      { return c.w.Write(b) }
func (c writeOnlyConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (c writeOnlyConn) Close() error                     { return nil }
func (c writeOnlyConn) SetDeadline(time.Time) error      { return nil }
func (c writeOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (c writeOnlyConn) SetWriteDeadline(time.Time) error { return nil }
func (c writeOnlyConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c writeOnlyConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
