package decide

import (
	"strings"
	"testing"
)

// TestTransportNeedsTLSOrOptInOverTCP: a unix socket needs nothing more;
// a TCP target needs the proxy's certificate, key and the executor's CA,
// or the explicit opt-in to plain TCP.
func TestTransportNeedsTLSOrOptInOverTCP(t *testing.T) {
	mtls := TransportConfig{Target: "executor.test:50053", CertFile: "c.pem", KeyFile: "k.pem", CAFile: "ca.pem"}
	tests := []struct {
		name string
		c    TransportConfig
		want string // substring of the error; empty for none
	}{
		{"unix", TransportConfig{Target: "unix:///run/sandpit/executor/decision.sock"}, ""},
		{"unix with tls", TransportConfig{Target: "unix:///d.sock", CertFile: "c.pem"}, "no TLS"},
		{"unix insecure", TransportConfig{Target: "unix:///d.sock", InsecureTCP: true}, "no TLS"},
		{"tcp alone", TransportConfig{Target: "127.0.0.1:50053"}, "mutual TLS"},
		{"tcp without ca", TransportConfig{Target: "127.0.0.1:50053", CertFile: "c.pem", KeyFile: "k.pem"}, "mutual TLS"},
		{"tcp mtls", mtls, ""},
		{"tcp insecure", TransportConfig{Target: "127.0.0.1:50053", InsecureTCP: true}, ""},
		{"tcp both", TransportConfig{Target: mtls.Target, CertFile: "c.pem", KeyFile: "k.pem", CAFile: "ca.pem", InsecureTCP: true}, "exclude"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := mtls.Credentials(); err == nil || !strings.Contains(err.Error(), "decider-tls-cert") {
		t.Errorf("missing certificate files: %v, want a decider-tls-cert error", err)
	}
}
