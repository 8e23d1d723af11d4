package config

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseDefaults(t *testing.T) {
	c, err := Parse(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Defaults != limits.Defaults || c.Maxima != limits.Maxima {
		t.Errorf("limits %+v / %+v, want the built-in ones", c.Defaults, c.Maxima)
	}
	if c.Listen != "127.0.0.1:50051" || c.ContainerdNamespace != "sandpit" || c.SandboxUID != 65532 || c.MaxConcurrent != 8 || c.DNSPacketRate != 1000 {
		t.Errorf("unexpected defaults: %+v", c)
	}
}

func TestFlagsWinOverEnvironment(t *testing.T) {
	c, err := Parse([]string{"--max-concurrent", "3", "--default-memory", "128MiB", "--image-allowlist", "a, b*"},
		env(map[string]string{"SANDPIT_MAX_CONCURRENT": "5", "SANDPIT_MAX_QUEUE": "2", "SANDPIT_DEFAULT_TIMEOUT": "3s"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxConcurrent != 3 || c.MaxQueue != 2 || c.Defaults.Timeout != 3*time.Second || c.Defaults.MemoryBytes != 128<<20 {
		t.Errorf("got concurrent %d queue %d timeout %v memory %d", c.MaxConcurrent, c.MaxQueue, c.Defaults.Timeout, c.Defaults.MemoryBytes)
	}
	if strings.Join(c.ImageAllowlist, "|") != "a|b*" {
		t.Errorf("allowlist %q", c.ImageAllowlist)
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"root uid", []string{"--sandbox-uid", "0"}, nil, "sandbox-uid"},
		{"default above max", []string{"--default-memory", "4GiB"}, nil, "memory_bytes"},
		{"bad size", []string{"--max-output", "lots"}, nil, "byte size"},
		{"bad env", nil, map[string]string{"SANDPIT_MAX_QUEUE": "x"}, "SANDPIT_MAX_QUEUE"},
		{"no slots", []string{"--max-concurrent", "0"}, nil, "max-concurrent"},
		{"no DNS packets", []string{"--dns-packet-rate", "0"}, nil, "dns-packet-rate"},
		{"stray argument", []string{"extra"}, nil, "unexpected"},
		{"unknown runtime", []string{"--runtime", "kata"}, nil, "unknown OCI runtime"},
		{"binding without runtime", []string{"--image-runtime", "sandpit.local/node:24"}, nil, "IMAGE=RUNTIME"},
		{"binding to unknown runtime", nil, map[string]string{"SANDPIT_IMAGE_RUNTIME": "a=runc,b=kata"}, "SANDPIT_IMAGE_RUNTIME"},
		{"unknown runsc platform", []string{"--runsc-platform", "systrap"}, nil, "runsc-platform"},
		{"tls cert without key", []string{"--tls-cert", "a.crt"}, nil, "tls-cert and tls-key"},
		{"tls key without cert", nil, map[string]string{"SANDPIT_TLS_KEY": "a.key"}, "tls-cert and tls-key"},
		{"client CA without tls", []string{"--tls-client-ca", "ca.crt"}, nil, "tls-client-ca needs"},
		{"tenants without authentication", []string{"--tenants-file", "t.yaml"}, nil, "need callers to be authenticated"},
		{"tenants file and store", []string{"--tenants-file", "t.yaml", "--policy-store", "postgres://x", "--jwt-hs256-secret-file", "s"}, nil, "not both"},
		{"store not postgres", []string{"--policy-store", "mysql://x", "--jwt-hs256-secret-file", "s"}, nil, "postgres:// URL"},
		{"no tenants reload", []string{"--tenants-reload-interval", "0s"}, nil, "tenants-reload-interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.args, env(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestBytes(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
	}{{"0", 0}, {"1024", 1024}, {"4KiB", 4096}, {"64MiB", 64 << 20}, {"2GiB", 2 << 30}, {"10B", 10}}
	for _, tt := range tests {
		got, err := ParseBytes(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	if _, err := ParseBytes("99999999999999999999GiB"); err == nil {
		t.Error("overflow accepted")
	}
	if got := FormatBytes(64 << 20); got != "64MiB" {
		t.Errorf("FormatBytes = %q", got)
	}
}

func TestEgressFlag(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want bool
	}{
		{nil, nil, false},
		{[]string{"--egress"}, nil, true},
		{nil, map[string]string{"SANDPIT_EGRESS": "true"}, true},
	} {
		c, err := Parse(tt.args, env(tt.env))
		if err != nil || c.Egress != tt.want || c.DecisionListen != DefaultDecisionListen {
			t.Errorf("Parse(%q, %v): egress %v, decision listen %q, %v; want egress %v", tt.args, tt.env, c.Egress, c.DecisionListen, err, tt.want)
		}
	}
	if _, err := Parse([]string{"--egress-proxy", "127.0.0.1:50052"}, env(nil)); err == nil {
		t.Error("--egress-proxy is still accepted: the executor no longer dials the proxy")
	}
}

// TestDecisionListenNeedsTLSOrOptIn: with egress, a TCP decision listener
// needs mutual TLS or --decision-insecure-tcp; a unix socket needs neither.
func TestDecisionListenNeedsTLSOrOptIn(t *testing.T) {
	tls := []string{"--decision-tls-cert", "c.pem", "--decision-tls-key", "k.pem", "--decision-client-ca", "ca.pem", "--decision-proxy-identity", "spiffe://sandpit/egress-proxy"}
	for _, tt := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"--egress"}, true},
		{[]string{"--egress", "--decision-listen", "127.0.0.1:50053"}, false},
		{[]string{"--decision-listen", "127.0.0.1:50053"}, true}, // without egress nothing listens
		{[]string{"--egress", "--decision-listen", "127.0.0.1:50053", "--decision-insecure-tcp"}, true},
		{append([]string{"--egress", "--decision-listen", "127.0.0.1:50053"}, tls...), true},
		{append([]string{"--egress", "--decision-listen", "127.0.0.1:50053"}, tls[:4]...), false},
		{append([]string{"--egress"}, tls...), false},
	} {
		c, err := Parse(tt.args, env(nil))
		if (err == nil) != tt.ok {
			t.Errorf("Parse(%q): %v, want ok %v", tt.args, err, tt.ok)
		}
		if err == nil && c.DecisionListener(7).ProxyUID != 7 {
			t.Errorf("Parse(%q): the proxy's uid is lost", tt.args)
		}
	}
}

func TestRuntimeFlags(t *testing.T) {
	c, err := Parse(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Runtimes.Choose(ociruntime.Request{Image: "sandpit.local/node:24"}); got != ociruntime.Runc || c.RunscPath != "/usr/bin/runsc" || c.RunscPlatform != "ptrace" {
		t.Errorf("defaults: runtime %s, runsc %q, platform %q; want runc, /usr/bin/runsc, ptrace", got, c.RunscPath, c.RunscPlatform)
	}
	c, err = Parse([]string{"--runtime", "runsc", "--image-runtime", "sandpit.local/trusted:24=runc", "--image-runtime", "sandpit.local/node-sdk*=runsc"},
		env(map[string]string{"SANDPIT_IMAGE_RUNTIME": "ignored=runc"}))
	if err != nil {
		t.Fatal(err)
	}
	want := ociruntime.Table{Default: ociruntime.Runsc, Bindings: []ociruntime.Binding{
		{Image: "sandpit.local/trusted:24", Runtime: ociruntime.Runc},
		{Image: "sandpit.local/node-sdk*", Runtime: ociruntime.Runsc},
	}}
	if !reflect.DeepEqual(c.Runtimes, want) {
		t.Errorf("runtimes %+v, want %+v", c.Runtimes, want)
	}
	c, err = Parse(nil, env(map[string]string{"SANDPIT_IMAGE_RUNTIME": "a=runsc, b=runc"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Runtimes.Bindings) != 2 || c.Runtimes.Choose(ociruntime.Request{Image: "a"}) != ociruntime.Runsc || c.Runtimes.Choose(ociruntime.Request{Image: "b"}) != ociruntime.Runc {
		t.Errorf("bindings from the environment: %+v", c.Runtimes.Bindings)
	}
}
