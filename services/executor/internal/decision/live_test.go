package decision

import (
	"net/netip"
	"sync/atomic"
	"testing"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy"
)

// TestSchemeAndPortDecided checks the proxy's scheme and port reach the
// policy: a host entry without ports allows https on 443 only.
func TestSchemeAndPortDecided(t *testing.T) {
	reg := NewRegistry()
	e := NewExecution("x1", compile(t, "version: 1\nhosts:\n  - { host: api.example.com, default: allow }\n"), make(chan *executorv1.NetworkEvent, 64))
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	tests := []struct {
		scheme string
		port   uint32
		want   policyv1.Decision
		rule   string
	}{
		{"https", 443, policyv1.Decision_DECISION_ALLOW, "hosts[0].default"},
		{"https", 8443, policyv1.Decision_DECISION_DENY, "hosts[0].ports"},
		{"http", 80, policyv1.Decision_DECISION_DENY, "hosts[0].schemes"},
	}
	for i, tt := range tests {
		resp := ask(t, s, question(uint64(i+1), &egressv1.HttpRequest{
			SourceIp: "10.88.0.2", Method: "GET", Scheme: tt.scheme, Host: "api.example.com", Port: tt.port, Path: "/", ContentLength: -1,
		}))
		if resp.GetDecision() != tt.want || resp.GetRuleId() != tt.rule {
			t.Errorf("%s:%d: %v by %q, want %v by %q (%s)", tt.scheme, tt.port, resp.GetDecision(), resp.GetRuleId(), tt.want, tt.rule, resp.GetReason())
		}
	}
}

// TestLiveExecutionFollowsPolicy swaps the policy of a registered
// execution between two questions: the second is decided by the new one.
func TestLiveExecutionFollowsPolicy(t *testing.T) {
	reg := NewRegistry()
	var current atomic.Pointer[policy.Compiled]
	current.Store(compile(t, "version: 1\ndefault: allow\n"))
	e := NewLiveExecution("x1", current.Load, make(chan *executorv1.NetworkEvent, 64))
	defer reg.Register(netip.MustParseAddr("10.88.0.2"), e)()
	s := decider(t, reg)
	if resp := ask(t, s, httpReq(1, "10.88.0.2", "GET", "api.example.com", "/")); resp.GetDecision() != policyv1.Decision_DECISION_ALLOW {
		t.Fatalf("before: %v by %q", resp.GetDecision(), resp.GetRuleId())
	}
	current.Store(policy.DenyAll())
	if resp := ask(t, s, httpReq(2, "10.88.0.2", "GET", "api.example.com", "/")); resp.GetDecision() != policyv1.Decision_DECISION_DENY || resp.GetRuleId() != "default" {
		t.Fatalf("after: %v by %q, want deny by default", resp.GetDecision(), resp.GetRuleId())
	}
	if dns := ask(t, s, dnsReq(3, "10.88.0.2", "api.example.com")); dns.GetDecision() != policyv1.Decision_DECISION_DENY {
		t.Errorf("DNS after: %v, want deny", dns.GetDecision())
	}
}
