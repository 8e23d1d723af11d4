package config

import (
	"strings"
	"testing"
)

func TestProxyUser(t *testing.T) {
	c, err := Parse(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.ProxyUser != DefaultProxyUser || DefaultProxyUser != "sandpit-egress" {
		t.Errorf("proxy-user %q, want %q (what make run runs the proxy as)", c.ProxyUser, "sandpit-egress")
	}
	c, err = Parse(nil, env(map[string]string{"SANDPIT_PROXY_USER": "4242"}))
	if err != nil || c.ProxyUser != "4242" {
		t.Errorf("proxy-user from the environment: %q, %v", c.ProxyUser, err)
	}
	if _, err := Parse([]string{"--proxy-user", ""}, env(nil)); err == nil || !strings.Contains(err.Error(), "proxy-user") {
		t.Errorf("empty proxy-user: %v, want an error naming it", err)
	}
}
