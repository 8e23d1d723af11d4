package config

import (
	"strings"
	"testing"

	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
)

func TestMaxNetworkLogBytes(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want uint64
		err  string
	}{
		{"default", nil, nil, decision.DefaultMaxNetworkLogBytes, ""},
		{"flag", []string{"--max-network-log-bytes", "64MiB"}, nil, 64 << 20, ""},
		{"environment", nil, map[string]string{"SANDPIT_MAX_NETWORK_LOG_BYTES": "1GiB"}, 1 << 30, ""},
		{"zero", []string{"--max-network-log-bytes", "0"}, nil, 0, "max-network-log-bytes"},
		{"not a size", []string{"--max-network-log-bytes", "lots"}, nil, 0, "byte size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(tt.args, env(tt.env))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want one mentioning %q", err, tt.err)
				}
				return
			}
			if err != nil || c.MaxNetworkLogBytes != tt.want {
				t.Fatalf("got %d, %v; want %d", c.MaxNetworkLogBytes, err, tt.want)
			}
		})
	}
}
