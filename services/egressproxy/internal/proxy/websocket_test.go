package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
)

// wsDecider allows every request with a body limit of maxBody, and
// maxResp response bytes left, and records outcomes.
type wsDecider struct {
	outcomeRecorder
	maxBody, maxResp uint64
}

func (d *wsDecider) AskHTTP(context.Context, decide.HTTPQuestion) (decide.Verdict, error) {
	return decide.Verdict{Decision: policyv1.Decision_DECISION_ALLOW, RuleID: "test", MaxRequestBytes: d.maxBody, MaxResponseBytes: d.maxResp}, nil
}

func (d *wsDecider) outcome(t *testing.T) decide.Outcome {
	t.Helper()
	var o []decide.Outcome
	waitFor(t, "the relay's outcome", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		o = append([]decide.Outcome(nil), d.outcomes...)
		return len(o) > 0
	})
	if len(o) != 1 {
		t.Fatalf("outcomes %+v, want one", o)
	}
	return o[0]
}

// wsUpstream accepts WebSocket upgrades, answers 101 and then, by the
// request's path: /flood sends floodBytes, /close sends "hello" and
// closes, /echo sends back what it reads; every other path reads until
// the proxy closes or half-closes, then closes and sends how many bytes
// it read on got.
type wsUpstream struct {
	ln  net.Listener
	got chan int
}

const floodBytes = 10000

func startWSUpstream(t *testing.T) *wsUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &wsUpstream{ln: ln, got: make(chan int, 8)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go u.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return u
}

func (u *wsUpstream) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	switch req.URL.Path {
	case "/flood":
		c.Write(bytes.Repeat([]byte("d"), floodBytes))
	case "/close":
		io.WriteString(c, "hello")
		return
	}
	w := io.Discard
	if req.URL.Path == "/echo" {
		w = c
	}
	n, _ := io.Copy(w, br)
	u.got <- int(n)
}

// openWS sends an upgrade for path from src and reads the 101.
func openWS(t *testing.T, e *plainEnv, src, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c := e.dialFrom(t, src)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: hang.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", path)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %d, want 101", resp.StatusCode)
	}
	return c, br
}

// TestWebSocketRelayBounds relays WebSockets through the proxy to a raw
// upstream and checks each way a relay ends: the bytes passed on (never
// one past a bound), the bytes reported each way, and the reason.
func TestWebSocketRelayBounds(t *testing.T) {
	up := startWSUpstream(t)
	tests := []struct {
		name     string
		maxBody  uint64
		maxResp  uint64 // response bytes left of the execution's total
		limits   WebSocketLimits
		path     string
		send     int  // bytes the sandbox sends after the 101
		halfOpen bool // the sandbox half-closes after sending
		// upGot is what the upstream must read, -1 when it is not asked.
		upGot      int
		sent, recv uint64
		reason     string
	}{
		{name: "policy limit", maxBody: 1000, path: "/count", send: 5000, upGot: 1000, sent: 1000,
			reason: "websocket cut: the sandbox sent more than 1000 bytes (limits.max_request_bytes)"},
		{name: "proxy limit without a policy one", limits: WebSocketLimits{MaxSentBytes: 2000}, path: "/count", send: 5000, upGot: 2000, sent: 2000,
			reason: "websocket cut: the sandbox sent more than 2000 bytes (the proxy's websocket-max-sent-bytes)"},
		{name: "policy limit wins over the proxy's", maxBody: 3000, limits: WebSocketLimits{MaxSentBytes: 1000}, path: "/count", send: 5000, upGot: 3000, sent: 3000,
			reason: "websocket cut: the sandbox sent more than 3000 bytes (limits.max_request_bytes)"},
		{name: "received limit", limits: WebSocketLimits{MaxReceivedBytes: 3000}, path: "/flood", upGot: 0, recv: 3000,
			reason: "websocket cut: the upstream sent more than 3000 bytes (the proxy's websocket-max-received-bytes)"},
		{name: "response budget below the received limit", maxResp: 2000, limits: WebSocketLimits{MaxReceivedBytes: 3000}, path: "/flood", upGot: 0, recv: 2000,
			reason: "websocket cut: the upstream sent more than 2000 bytes (limits.max_total_response_bytes)"},
		{name: "received limit below the response budget", maxResp: 5000, limits: WebSocketLimits{MaxReceivedBytes: 3000}, path: "/flood", upGot: 0, recv: 3000,
			reason: "websocket cut: the upstream sent more than 3000 bytes (the proxy's websocket-max-received-bytes)"},
		{name: "idle", limits: WebSocketLimits{IdleTimeout: 300 * time.Millisecond}, path: "/count", send: 10, upGot: 10, sent: 10,
			reason: "websocket closed: nothing moved either way for 300ms (the proxy's websocket-idle-timeout)"},
		{name: "sandbox closes", path: "/count", send: 10, halfOpen: true, upGot: 10, sent: 10, reason: "websocket closed by the sandbox"},
		{name: "upstream closes", path: "/close", upGot: -1, recv: 5, reason: "websocket closed by the upstream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec := &wsDecider{maxBody: tt.maxBody, maxResp: tt.maxResp}
			e := startPlain(t, Config{Decider: dec, WebSocket: tt.limits}, up.ln.Addr().String())
			c, br := openWS(t, e, "127.0.0.1", tt.path)
			start := time.Now()
			if tt.send > 0 {
				// The write may fail once the proxy cuts the relay.
				_, _ = c.Write(bytes.Repeat([]byte("u"), tt.send))
			}
			if tt.halfOpen {
				_ = c.(*net.TCPConn).CloseWrite()
			}
			down, _ := io.ReadAll(br) // until the proxy closes
			o := dec.outcome(t)
			if o.StatusCode != 101 || o.BytesSent != tt.sent || o.BytesReceived != tt.recv || o.Error != tt.reason {
				t.Errorf("outcome %+v, want 101 with %d bytes sent, %d received, reason %q", o, tt.sent, tt.recv, tt.reason)
			}
			if uint64(len(down)) != tt.recv {
				t.Errorf("the sandbox received %d bytes, want %d", len(down), tt.recv)
			}
			if tt.upGot >= 0 {
				select {
				case n := <-up.got:
					if n != tt.upGot {
						t.Errorf("the upstream read %d bytes, want %d", n, tt.upGot)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the upstream's connection was not closed")
				}
			}
			if tt.limits.IdleTimeout > 0 {
				if took := time.Since(start); took < tt.limits.IdleTimeout {
					t.Errorf("idle relay closed after %v, before its timeout %v", took, tt.limits.IdleTimeout)
				}
			}
		})
	}
}

// TestWebSocketReleased: when the execution ends, CloseSource ends the
// relay, and the outcome says the proxy closed it.
func TestWebSocketReleased(t *testing.T) {
	up := startWSUpstream(t)
	dec := &wsDecider{}
	e := startPlain(t, Config{Decider: dec}, up.ln.Addr().String())
	c, br := openWS(t, e, "127.0.0.1", "/echo")
	if _, err := c.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, 3)
	if _, err := io.ReadFull(br, echo); err != nil || string(echo) != "abc" {
		t.Fatalf("echo %q, %v", echo, err)
	}
	if n := e.p.CloseSource(netip.MustParseAddr("127.0.0.1")); n != 1 {
		t.Fatalf("CloseSource closed %d connections, want 1", n)
	}
	_, _ = io.ReadAll(br)
	if o := dec.outcome(t); o.Error != "websocket closed by the proxy: the execution ended or the proxy stopped" || o.BytesSent != 3 || o.BytesReceived != 3 {
		t.Errorf("outcome %+v, want %q with 3 bytes each way", o, relayEnd("websocket closed by the proxy: the execution ended or the proxy stopped"))
	}
	if n := <-up.got; n != 3 {
		t.Errorf("the upstream read %d bytes, want 3", n)
	}
}
