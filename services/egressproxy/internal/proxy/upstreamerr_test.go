package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dialer"
)

type dnsFailing struct{}

func (dnsFailing) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	return nil, &net.DNSError{Err: "server misbehaving", Name: host, Server: "10.0.0.2:53"}
}

// TestUpstreamErrorBody checks, for real errors of each class, that the
// 502 body a sandbox gets names the class with a fixed message and
// nothing of the error, while the proxy's log has it all.
func TestUpstreamErrorBody(t *testing.T) {
	ctx := context.Background()
	none := func() ([]netip.Addr, error) { return nil, nil }
	d := dialer.New(dialer.Config{Resolver: dnsFailing{}, HostAddrs: none, Timeout: time.Second})

	_, refusedErr := d.DialContext(ctx, "tcp", "10.1.2.3:443")
	_, dnsErr := d.DialContext(ctx, "tcp", "internal.test:443")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().String()
	ln.Close()
	_, connRefusedErr := net.Dial("tcp", closedPort)
	tlsSrv := httptest.NewTLSServer(nil)
	defer tlsSrv.Close()
	_, tlsErr := tls.Dial("tcp", tlsSrv.Listener.Addr().String(), &tls.Config{ServerName: "api.test"})

	tests := []struct {
		name   string
		err    error
		class  string
		secret string // what the body must not show
	}{
		{"address refused", refusedErr, upstreamRefused, "10.1.2.3"},
		{"dns", dnsErr, upstreamDNSFailure, "10.0.0.2"},
		{"connection refused", connRefusedErr, upstreamConnRefused, closedPort},
		{"tls", tlsErr, upstreamTLSError, "x509"},
		{"dial timeout", &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 9, 8, 7), Port: 443}, Err: os.ErrDeadlineExceeded}, upstreamTimeout, "10.9.8.7"},
		{"context deadline", fmt.Errorf("dial 10.9.8.6:443: %w", context.DeadlineExceeded), upstreamTimeout, "10.9.8.6"},
		{"unreachable", &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 9, 8, 5), Port: 443}, Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, upstreamUnreachable, "10.9.8.5"},
		{"closed", fmt.Errorf("read from 10.9.8.4:443: %w", io.ErrUnexpectedEOF), upstreamClosed, "10.9.8.4"},
		{"other", errors.New("http2: 10.9.8.3 sent GOAWAY"), upstreamOther, "10.9.8.3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err == nil {
				t.Fatal("the test's error did not happen")
			}
			if !strings.Contains(tt.err.Error(), tt.secret) {
				t.Fatalf("error %q does not contain %q: the test proves nothing", tt.err, tt.secret)
			}
			var logged bytes.Buffer
			p := &Proxy{log: slog.New(slog.NewJSONHandler(&logged, nil))}
			body := p.errorBody(&checked{host: "api.test"}, tt.err)
			var got struct {
				Decision string
				Host     string
				Error    apiError
			}
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			if got.Decision != "allowed" || got.Host != "api.test" || got.Error.Type != "sandpit_upstream_error" ||
				got.Error.Code != tt.class || got.Error.Message != upstreamErrorMessages[tt.class] || got.Error.Message == "" {
				t.Errorf("body %s, want class %s with its fixed message", body, tt.class)
			}
			if strings.Contains(string(body), tt.secret) || strings.Contains(string(body), tt.err.Error()) {
				t.Errorf("body %s reveals %q", body, tt.secret)
			}
			if !strings.Contains(logged.String(), tt.secret) || !strings.Contains(logged.String(), `"class":"`+tt.class+`"`) {
				t.Errorf("log %s lacks the detail or the class", logged.String())
			}
		})
	}
}

// No fixed message names an address or a port.
func TestUpstreamErrorMessagesAreFixed(t *testing.T) {
	for class, msg := range upstreamErrorMessages {
		if strings.ContainsAny(msg, "0123456789:%") {
			t.Errorf("%s: message %q looks like it carries detail", class, msg)
		}
	}
}
