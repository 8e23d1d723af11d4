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
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dialer"
)

type dnsFailing struct{}

func (dnsFailing) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	return nil, &net.DNSError{Err: "server misbehaving", Name: host, Server: "10.0.0.2:53"}
}

// outcomeRecorder is a Decider that records outcomes.
type outcomeRecorder struct {
	refusalRecorder
	outcomes []decide.Outcome
}

func (r *outcomeRecorder) ReportOutcome(o decide.Outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outcomes = append(r.outcomes, o)
}

// TestUpstreamErrorBody checks, for real errors of each class, that the
// 502 body a sandbox gets and the outcome the executor gets name the
// class with the same fixed message and nothing of the error, while the
// proxy's log has it all.
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
	_, certErr := tls.Dial("tcp", tlsSrv.Listener.Addr().String(), &tls.Config{ServerName: "api.test"})
	plainSrv := httptest.NewServer(nil)
	defer plainSrv.Close()
	// TLS to a plain HTTP upstream: its answer is no TLS record.
	_, tlsErr := tls.Dial("tcp", plainSrv.Listener.Addr().String(), &tls.Config{ServerName: "api.test"})
	// A url.Error, as the transport returns, quoting the URL and query.
	urlErr := &url.Error{Op: "Get", URL: "https://api.test/v1/x?api_key=sk_live_q", Err: connRefusedErr}

	tests := []struct {
		name   string
		err    error
		class  string
		secret string // what neither the body nor the outcome may show
	}{
		{"address refused", refusedErr, upstreamRefused, "10.1.2.3"},
		{"dns", dnsErr, upstreamDNSFailure, "10.0.0.2"},
		{"connection refused", connRefusedErr, upstreamConnRefused, closedPort},
		{"url error", urlErr, upstreamConnRefused, "sk_live_q"},
		{"tls certificate", certErr, upstreamTLSCert, "x509"},
		{"tls", tlsErr, upstreamTLSError, "does not look like a TLS handshake"},
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
			rec := &outcomeRecorder{}
			p := &Proxy{cfg: Config{Decider: rec}, log: slog.New(slog.NewJSONHandler(&logged, nil))}
			c := &checked{host: "api.test"}
			p.outcome(c, verdict{id: 7, at: time.Now()}, 0, 0, 0, tt.err)
			body := errorBody(c, tt.err)
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
			if len(rec.outcomes) != 1 || rec.outcomes[0].QuestionID != 7 || rec.outcomes[0].Error != got.Error.Message {
				t.Fatalf("outcomes %+v, want one for question 7 saying %q", rec.outcomes, got.Error.Message)
			}
			for what, text := range map[string]string{"body": string(body), "outcome": rec.outcomes[0].Error} {
				if strings.Contains(text, tt.secret) || strings.Contains(text, tt.err.Error()) || strings.Contains(text, "127.0.0.1") {
					t.Errorf("%s %s reveals %q", what, text, tt.secret)
				}
			}
			if !strings.Contains(logged.String(), tt.secret) || !strings.Contains(logged.String(), `"class":"`+tt.class+`"`) {
				t.Errorf("log %s lacks the detail or the class", logged.String())
			}
		})
	}
}

// TestOutcomeErrorsNotUpstream: what ends an exchange on the sandbox's
// side, or by a limit, or a WebSocket relay's end, is reported in its own
// fixed words and not logged as an upstream failure.
func TestOutcomeErrorsNotUpstream(t *testing.T) {
	broken := &net.OpError{Op: "write", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 88, 0, 2), Port: 40000}, Err: os.NewSyscallError("write", syscall.EPIPE)}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"none", nil, ""},
		{"sandbox gone", fmt.Errorf("%w: %w", errSandboxClosed, broken), "sandbox closed the connection"},
		{"cancelled", fmt.Errorf("dial 10.9.8.2:443: %w", context.Canceled), "sandbox closed the connection"},
		{"body too large", errBodyTooLarge, errBodyTooLarge.Error()},
		{"websocket", relayEnd("websocket closed by the upstream"), "websocket closed by the upstream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logged bytes.Buffer
			rec := &outcomeRecorder{}
			p := &Proxy{cfg: Config{Decider: rec}, log: slog.New(slog.NewJSONHandler(&logged, nil))}
			p.outcome(&checked{host: "api.test"}, verdict{at: time.Now()}, 0, 0, 0, tt.err)
			if len(rec.outcomes) != 1 || rec.outcomes[0].Error != tt.want {
				t.Fatalf("outcomes %+v, want one saying %q", rec.outcomes, tt.want)
			}
			if logged.Len() != 0 {
				t.Errorf("logged as an upstream failure: %s", logged.String())
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
