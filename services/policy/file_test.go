package policy

import (
	"errors"
	"strings"
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"google.golang.org/protobuf/proto"
)

func TestLoadExample(t *testing.T) {
	got, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	allow, deny := policyv1.Action_ACTION_ALLOW, policyv1.Action_ACTION_DENY
	want := &policyv1.Policy{
		Mode:          policyv1.Mode_MODE_ENFORCE,
		DefaultAction: deny,
		Hosts: []*policyv1.HostPolicy{
			{
				Host: "api.stripe.com",
				Rules: []*policyv1.Rule{
					{Id: "list-products", Methods: []string{"GET", "POST"}, Path: "/v1/products/**", Action: allow},
					{Methods: []string{"POST"}, Path: "/v1/charges", Action: deny, Reason: "charges are not allowed"},
					{Methods: []string{"GET"}, Path: "/v1/stream", Action: allow, Websocket: true},
				},
				DefaultAction: deny,
			},
			{Host: "api.github.com", DefaultAction: allow},
			{Host: "*.githubusercontent.com", Rules: []*policyv1.Rule{{Methods: []string{"GET", "HEAD"}, Action: allow}}},
		},
		Limits: &policyv1.PolicyLimits{MaxRequests: 100, MaxRequestBytes: 1 << 20},
	}
	if !proto.Equal(got, want) {
		t.Errorf("Load mismatch:\ngot  %v\nwant %v", got, want)
	}
}

func TestLoadMissing(t *testing.T) {
	if _, err := Load("testdata/does-not-exist.yaml"); err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
}

func TestParseMinimal(t *testing.T) {
	p, err := Parse([]byte("version: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(p, &policyv1.Policy{}) {
		t.Errorf("Parse(version only) = %v, want an empty policy (enforce, default deny)", p)
	}
}

// TestParseErrors checks that each problem is reported at its field, in
// proto field names, with the line it is on.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name   string
		yaml   string
		field  string
		line   int
		reason string
	}{
		{name: "no version", yaml: "default: deny\n", field: "version", line: 1, reason: "required"},
		{name: "version 2", yaml: "version: 2\n", field: "version", line: 1, reason: "not supported"},
		{name: "version string", yaml: "version: one\n", field: "version", line: 1, reason: "whole number"},
		{name: "unknown top key", yaml: "version: 1\nallow: all\n", field: "", line: 2, reason: `unknown key "allow"`},
		{name: "repeated key", yaml: "version: 1\nmode: audit\nmode: enforce\n", field: "", line: 3, reason: `"mode" is repeated`},
		{name: "bad mode", yaml: "version: 1\nmode: permissive\n", field: "mode", line: 2, reason: "enforce or audit"},
		{name: "bad default", yaml: "version: 1\ndefault: maybe\n", field: "default_action", line: 2, reason: "allow or deny"},
		{name: "default not a string", yaml: "version: 1\ndefault: true\n", field: "default_action", line: 2, reason: "must be a string"},
		{name: "hosts not a list", yaml: "version: 1\nhosts: {host: a.com}\n", field: "hosts", line: 2, reason: "a list"},
		{name: "unknown host key", yaml: "version: 1\nhosts:\n  - host: a.com\n    allow: true\n", field: "hosts[0]", line: 4, reason: `unknown key "allow"`},
		{name: "host not a string", yaml: "version: 1\nhosts:\n  - host: [a.com]\n", field: "hosts[0].host", line: 3, reason: "a string"},
		{name: "unknown rule key", yaml: "version: 1\nhosts:\n  - host: a.com\n    rules:\n      - {method: GET, action: allow}\n", field: "hosts[0].rules[0]", line: 5, reason: `unknown key "method"`},
		{name: "methods not a list", yaml: "version: 1\nhosts:\n  - host: a.com\n    rules:\n      - {methods: GET, action: allow}\n", field: "hosts[0].rules[0].methods", line: 5, reason: "a list"},
		{name: "method a number", yaml: "version: 1\nhosts:\n  - host: a.com\n    rules:\n      - {methods: [GET, 7], action: allow}\n", field: "hosts[0].rules[0].methods[1]", line: 5, reason: "a string"},
		{name: "bad action", yaml: "version: 1\nhosts:\n  - host: a.com\n    rules:\n      - {action: permit}\n", field: "hosts[0].rules[0].action", line: 5, reason: "allow or deny"},
		{name: "websocket yes", yaml: "version: 1\nhosts:\n  - host: a.com\n    rules:\n      - {action: allow, websocket: yes}\n", field: "hosts[0].rules[0].websocket", line: 5, reason: "true or false"},
		{name: "max_requests negative", yaml: "version: 1\nlimits: {max_requests: -1}\n", field: "limits.max_requests", line: 2, reason: "whole number"},
		{name: "max_requests too big", yaml: "version: 1\nlimits: {max_requests: 4294967296}\n", field: "limits.max_requests", line: 2, reason: "more than"},
		{name: "max_request_bytes MB", yaml: "version: 1\nlimits: {max_request_bytes: 1MB}\n", field: "limits.max_request_bytes", line: 2, reason: "KiB"},
		{name: "max_request_bytes fraction", yaml: "version: 1\nlimits: {max_request_bytes: 1.5MiB}\n", field: "limits.max_request_bytes", line: 2, reason: "KiB"},
		{name: "max_request_bytes float", yaml: "version: 1\nlimits: {max_request_bytes: 1.5}\n", field: "limits.max_request_bytes", line: 2, reason: "whole number"},
		{name: "unknown limit", yaml: "version: 1\nlimits: {max_bytes: 1}\n", field: "limits", line: 2, reason: `unknown key "max_bytes"`},
		{name: "alias", yaml: "version: 1\nhosts:\n  - &h {host: a.com}\n  - *h\n", field: "hosts[1]", line: 4, reason: "aliases"},
		{name: "two documents", yaml: "version: 1\n---\nversion: 1\n", field: "", line: 2, reason: "more than one"},
		{name: "empty", yaml: "", field: "", line: 0, reason: "empty"},
		{name: "not a mapping", yaml: "- version: 1\n", field: "", line: 1, reason: "a mapping"},
		// Problems Validate finds get the line of their field, or of the
		// nearest enclosing one when the field is missing.
		{name: "bad host", yaml: "version: 1\nhosts:\n  - host: a.com\n  - host: '*'\n", field: "hosts[1].host", line: 4, reason: "bare"},
		{name: "duplicate host", yaml: "version: 1\nhosts:\n  - host: a.com\n  - host: A.com.\n", field: "hosts[1].host", line: 4, reason: "already named by hosts[0].host"},
		{name: "missing action", yaml: "version: 1\nhosts:\n  - host: a.com\n    rules:\n      - path: /x\n", field: "hosts[0].rules[0].action", line: 5, reason: "required"},
		{name: "bad path", yaml: "version: 1\nhosts:\n  - host: a.com\n    rules:\n      - {action: allow, path: /a/../b}\n", field: "hosts[0].rules[0].path", line: 5, reason: `".."`},
		{name: "lowercase method", yaml: "version: 1\nhosts:\n  - host: a.com\n    rules:\n      - {action: allow, methods: [get]}\n", field: "hosts[0].rules[0].methods[0]", line: 5, reason: "uppercase"},
		{name: "passthrough yes", yaml: "version: 1\nhosts:\n  - host: a.com\n    passthrough: yes\n", field: "hosts[0].passthrough", line: 4, reason: "true or false"},
		{name: "passthrough with rules", yaml: "version: 1\nhosts:\n  - host: a.com\n    passthrough: true\n    rules:\n      - {action: allow}\n", field: "hosts[0].passthrough", line: 4, reason: "no rule can apply"},
		{name: "passthrough denied", yaml: "version: 1\nhosts:\n  - host: a.com\n    passthrough: true\n    default: deny\n", field: "hosts[0].passthrough", line: 4, reason: "allowed whole"},
		{name: "passthrough over http", yaml: "version: 1\nhosts:\n  - host: a.com\n    passthrough: true\n    schemes: [https, http]\n", field: "hosts[0].passthrough", line: 4, reason: "remove http"},
		{name: "duplicate id", yaml: "version: 1\nhosts:\n  - host: a.com\n    rules:\n      - {id: r, action: allow}\n  - host: b.com\n    rules:\n      - {id: r, action: allow}\n", field: "hosts[1].rules[0].id", line: 8, reason: "already the id of hosts[0].rules[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error = %v, want an Errors", err)
			}
			for _, e := range errs {
				if e.Field == tt.field && e.Line == tt.line && strings.Contains(e.Reason, tt.reason) {
					return
				}
			}
			t.Errorf("Parse error = %v\nwant line %d: %s: ...%s...", err, tt.line, tt.field, tt.reason)
		})
	}
}

func TestParseMalformedYAML(t *testing.T) {
	_, err := Parse([]byte("version: 1\nhosts: [\n"))
	if err == nil {
		t.Fatal("Parse of malformed YAML succeeded")
	}
	var errs Errors
	if errors.As(err, &errs) {
		t.Errorf("malformed YAML gave field errors %v, want the YAML error", errs)
	}
}

// TestParseReportsEveryProblem checks that one bad file yields all of its
// problems at once, not the first.
func TestParseReportsEveryProblem(t *testing.T) {
	_, err := Parse([]byte(`version: 1
hosts:
  - host: "*.com"
    rules:
      - { id: default, path: x, action: allow }
      - { methods: [get, POST, POST], path: "/a/**/b" }
  - host: FOO.com.
  - host: foo.com
`))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse error = %v, want an Errors", err)
	}
	want := []string{
		"hosts[0].host",
		"hosts[0].rules[0].id",
		"hosts[0].rules[0].path",
		"hosts[0].rules[1].methods[0]",
		"hosts[0].rules[1].methods[2]",
		"hosts[0].rules[1].path",
		"hosts[0].rules[1].action",
		"hosts[2].host",
	}
	var got []string
	for _, e := range errs {
		got = append(got, e.Field)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("fields = %v\nwant     %v\nerror: %v", got, want, err)
	}
}

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{in: "0", want: 0},
		{in: "1024", want: 1024},
		{in: "512B", want: 512},
		{in: "1KiB", want: 1 << 10},
		{in: "1MiB", want: 1 << 20},
		{in: "2 GiB", want: 2 << 30},
		{in: "17179869183GiB", want: 17179869183 << 30},
		{in: "17179869184GiB", wantErr: true},
		{in: "99999999999999999999", wantErr: true},
		{in: "1MB", wantErr: true},
		{in: "1M", wantErr: true},
		{in: "1mib", wantErr: true},
		{in: "1.5MiB", wantErr: true},
		{in: "MiB", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseByteSize(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseByteSize(%q) = %d, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseByteSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatByteSize(t *testing.T) {
	tests := []struct {
		in   uint64
		want string
	}{
		{in: 0, want: "0"},
		{in: 1000, want: "1000"},
		{in: 1024, want: "1KiB"},
		{in: 1536, want: "1536"},
		{in: 3 << 20, want: "3MiB"},
		{in: 1<<30 + 1<<20, want: "1025MiB"},
		{in: 4 << 30, want: "4GiB"},
	}
	for _, tt := range tests {
		if got := FormatByteSize(tt.in); got != tt.want {
			t.Errorf("FormatByteSize(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	p, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p.Hosts[0].Rules[1].Reason = `yes: "quoted", #not a comment`
	p.Hosts[0].Rules[0].Id = "true"
	p.Hosts[0].Rules[2].Id = "123"
	p.Hosts[0].Rules[2].Reason = "null"
	p.Hosts[1].Host = "*.Bücher.example."
	p.Hosts[2].Rules[0].Path = "/a:b/%7Bx%7D,(y)/&z/*/**"
	p.Mode = policyv1.Mode_MODE_AUDIT
	p.Limits.MaxRequestBytes = 1000
	p.Hosts = append(p.Hosts, &policyv1.HostPolicy{Host: "pinned.example", Passthrough: true, Ports: []uint32{443, 8443}})
	roundTrip(t, p)
}

func TestMarshalRefusesInvalid(t *testing.T) {
	_, err := Marshal(&policyv1.Policy{Hosts: []*policyv1.HostPolicy{{Host: "*"}}})
	var errs Errors
	if !errors.As(err, &errs) || errs[0].Field != "hosts[0].host" {
		t.Errorf("Marshal(invalid) error = %v, want a field error at hosts[0].host", err)
	}
}
