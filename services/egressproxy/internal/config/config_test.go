package config

import (
	"net/netip"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	env := map[string]string{
		"SANDPIT_UPSTREAM_ALLOW":     "127.0.0.0/8, 10.1.0.0/16",
		"SANDPIT_DECIDE_TIMEOUT":     "500ms",
		"SANDPIT_LISTEN":             "ignored:1",
		"SANDPIT_ALLOW_PRIVATE_HOST": "Internal.Example.",
	}
	c, err := Parse([]string{"--listen", "127.0.0.1:15001", "--upstream", "api.stripe.test=127.0.0.1:12112", "--upstream", "b.test=127.0.0.1:1"},
		func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:15001" || c.DecideTimeout != 500*time.Millisecond || len(c.Upstreams) != 2 ||
		c.Upstreams["api.stripe.test"] != "127.0.0.1:12112" || len(c.UpstreamAllow) != 2 ||
		c.UpstreamAllow[0] != netip.MustParsePrefix("127.0.0.0/8") || c.AllowPrivateHosts[0] != "internal.example" ||
		c.DNSAnswerIP != netip.MustParseAddr("198.18.0.1") ||
		c.UpstreamResponseHeaderTimeout != 5*time.Minute || c.UpstreamIdleTimeout != 90*time.Second ||
		c.MaxConnsPerSource != 256 || c.Limits.HTTPInFlight != 64 ||
		c.WebSocket.MaxSentBytes != 64<<20 || c.WebSocket.MaxReceivedBytes != 256<<20 || c.WebSocket.IdleTimeout != time.Minute || c.PassthroughIdleTimeout != 2*time.Minute ||
		c.LeafCacheSize != 4096 || c.LeafMintRate != 10 || c.LeafMintBurst != 50 {
		t.Fatalf("%+v", c)
	}
	for _, bad := range [][]string{{"--upstream", "x"}, {"--upstream-allow", "nope"}, {"--ca-cert", "a"}, {"--dns-answer-ip", "::1"}, {"extra"},
		{"--upstream-response-header-timeout", "0s"}, {"--upstream-idle-timeout", "-1s"},
		{"--max-conns-per-source", "0"}, {"--http-in-flight", "-1"},
		{"--websocket-max-sent-bytes", "0"}, {"--websocket-max-received-bytes", "1MB"}, {"--websocket-idle-timeout", "0s"}, {"--passthrough-idle-timeout", "0s"},
		{"--leaf-cache-size", "0"}, {"--leaf-mint-rate", "-1"}, {"--leaf-mint-burst", "0"},
		// One in-flight bound: the proxy's own slot bound and its flag are gone.
		{"--max-decisions-per-source", "64"}} {
		if _, err := Parse(bad, func(string) string { return "" }); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}

func TestParseWebSocketLimits(t *testing.T) {
	c, err := Parse([]string{"--websocket-max-sent-bytes", "64KiB", "--websocket-idle-timeout", "5s"},
		func(k string) string { return map[string]string{"SANDPIT_WEBSOCKET_MAX_RECEIVED_BYTES": "1048576"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.WebSocket.MaxSentBytes != 64<<10 || c.WebSocket.MaxReceivedBytes != 1<<20 || c.WebSocket.IdleTimeout != 5*time.Second {
		t.Fatalf("%+v", c.WebSocket)
	}
}
