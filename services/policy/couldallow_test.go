package policy

import "testing"

// TestCouldAllowScheme: a TLS server name could be allowed only by an entry
// that lists https (or a default that allows); ports are not its concern.
func TestCouldAllowScheme(t *testing.T) {
	c := mustParse(t, `version: 1
default: deny
hosts:
  - host: api.example.com
    ports: [8443]
    rules:
      - { id: r, methods: [GET], path: /v1/**, action: allow }
  - host: plain.example.com
    schemes: [http]
    default: allow
  - host: "*.wild.example.com"
    default: allow
  - host: closed.example.com
    default: deny
`)
	tests := []struct {
		host string
		want bool
	}{
		{"api.example.com", true},
		{"plain.example.com", false},
		{"a.wild.example.com", true},
		{"closed.example.com", false},
		{"other.example.com", false},
		{"API.example.com", false}, // not canonical
	}
	for _, tt := range tests {
		if got := c.CouldAllowScheme(tt.host, SchemeHTTPS); got != tt.want {
			t.Errorf("CouldAllowScheme(%s, https) = %v, want %v", tt.host, got, tt.want)
		}
	}
	if !c.CouldAllowHost("plain.example.com") || !c.CouldAllowScheme("plain.example.com", SchemeHTTP) {
		t.Error("an http-only entry could allow no http request")
	}
	open := mustParse(t, "version: 1\ndefault: allow\n")
	if !open.CouldAllowScheme("anything.example.org", SchemeHTTPS) {
		t.Error("a default that allows could not allow https")
	}
}
