package main

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// TestReportPassthrough: the table's TLS column says which https requests
// the proxy would pass through, which it would intercept, and nothing for
// plain http or a denial; -json carries the verdict's passthrough field.
func TestReportPassthrough(t *testing.T) {
	req := &policyv1.CheckRequest{Requests: []*policyv1.CheckedRequest{
		{Method: "GET", Url: "https://pay.test/"},
		{Method: "GET", Url: "https://api.github.test/repos"},
		{Method: "GET", Url: "http://api.github.test/repos"},
		{Method: "GET", Url: "https://other.test/"},
	}}
	allow, deny := policyv1.Decision_DECISION_ALLOW, policyv1.Decision_DECISION_DENY
	resp := &policyv1.CheckResponse{Verdicts: []*policyv1.Verdict{
		{Decision: allow, RuleId: "hosts[0].passthrough", Passthrough: true},
		{Decision: allow, RuleId: "hosts[1].default"},
		{Decision: allow, RuleId: "hosts[1].default"},
		{Decision: deny, RuleId: "default", DenialCode: policyv1.DenialCode_DENIAL_CODE_HOST_NOT_ALLOWED},
	}}
	var out bytes.Buffer
	if err := report(&out, false, req, resp); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := [][]string{
		{"DECISION", "TLS", "METHOD", "URL"},
		{"allow", "passthrough", "GET", "https://pay.test/", "hosts[0].passthrough"},
		{"allow", "intercept", "GET", "https://api.github.test/repos"},
		{"allow", "-", "GET", "http://api.github.test/repos"},
		{"deny", "-", "GET", "https://other.test/", "default", "host_not_allowed"},
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s\nwant %d lines", out.String(), len(want))
	}
	for i, w := range want {
		if f := strings.Fields(lines[i]); len(f) < len(w) || strings.Join(f[:len(w)], " ") != strings.Join(w, " ") {
			t.Errorf("line %d: %q, want it to start with %q", i, lines[i], w)
		}
	}
	out.Reset()
	if err := report(&out, true, req, resp); err != nil {
		t.Fatal(err)
	}
	var back policyv1.CheckResponse
	if err := protojson.Unmarshal(out.Bytes(), &back); err != nil || !back.GetVerdicts()[0].GetPassthrough() || back.GetVerdicts()[1].GetPassthrough() {
		t.Errorf("-json: %v\n%s\nwant the first verdict passed through, the second not", err, out.String())
	}
}
