package server

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/executor/internal/secrets"
	"github.com/sandpit-run/sandpit/services/policy"
)

const bindingPolicy = `version: 1
hosts:
  - host: api.stripe.com
    rules: [{ id: products, methods: [GET], path: "/v1/products/**", action: allow }]
secrets:
  - { secret: stripe, placeholder: sk_test_, hosts: [api.stripe.com], header: { name: Authorization, template: "Bearer {{secret}}" } }
  - { secret: github, hosts: [api.stripe.com], basic: true }
`

const stripeValue = "sk_live_THEREALKEYnevertoleave42"

// secretsNetwork is an attachment that keeps the secrets it was given.
type secretsNetwork struct {
	summaryNetwork
	got *[]decision.Secret
}

func (n secretsNetwork) UseSecrets(s []decision.Secret) { *n.got = s }

// bindingEgress decides by the operator policy op narrowed, and attaches
// secretsNetworks.
type bindingEgress struct {
	op  *policy.Compiled
	got *[]decision.Secret
}

func (b bindingEgress) Attach(context.Context, string, *policy.Compiled, chan<- *executorv1.NetworkEvent) (Network, error) {
	return secretsNetwork{got: b.got}, nil
}

func (b bindingEgress) Policy(narrow *policy.Compiled) *policy.Compiled {
	return policy.Chain(b.op, narrow)
}

func (bindingEgress) Prepare() (Reservation, error) { return nil, errNoWarm }

// TestExecuteSecrets: a request's secrets reach the sandbox as
// placeholders of their binding's shape and the execution's network as
// values; a secret that is not in the store, or that no policy binds, or
// a request of the wrong shape, is refused before anything runs, naming
// the variable and never a value.
func TestExecuteSecrets(t *testing.T) {
	var env []string
	ran := 0
	sb := &fakeSandboxes{run: func(ctx context.Context, spec sandbox.Spec, started func()) (sandbox.Outcome, error) {
		ran++
		env = spec.Env
		return helloRun(ctx, spec, started)
	}}
	p, err := policy.Parse([]byte(bindingPolicy))
	if err != nil {
		t.Fatal(err)
	}
	op, err := policy.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	var got []decision.Secret
	s := newService(t, sb, nil)
	s.cfg.Egress = bindingEgress{op: op, got: &got}
	run := func(req *executorv1.ExecuteRequest) error {
		if req.Code == "" {
			req.Code = "1"
		}
		return s.Execute(req, &fakeStream{ctx: context.Background()})
	}

	wantRefused := func(name string, err error, code codes.Code, reason, field string) {
		t.Helper()
		ei := errorInfo(err)
		if status.Code(err) != code || ei == nil || ei.GetReason() != reason || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v, want %v %s naming %s", name, err, code, reason, field)
		}
		if strings.Contains(err.Error(), stripeValue) {
			t.Errorf("%s: the error carries the secret's value", name)
		}
	}
	if err := run(&executorv1.ExecuteRequest{Secrets: map[string]string{"STRIPE_KEY": "stripe"}}); err == nil {
		t.Fatal("ran without a secret store")
	} else {
		wantRefused("no store", err, codes.PermissionDenied, ReasonSecretNotAllowed, `secrets["STRIPE_KEY"]`)
	}

	s.cfg.Secrets, err = secrets.Open("", []string{secrets.EnvPrefix + "STRIPE=" + stripeValue, secrets.EnvPrefix + "UNBOUND=x"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	shape := []struct {
		name  string
		req   *executorv1.ExecuteRequest
		field string
	}{
		{"bad variable", &executorv1.ExecuteRequest{Secrets: map[string]string{"1X": "stripe"}}, `secrets["1X"]`},
		{"reserved variable", &executorv1.ExecuteRequest{Secrets: map[string]string{"PATH": "stripe"}}, `secrets["PATH"]`},
		{"also in env", &executorv1.ExecuteRequest{Env: map[string]string{"K": "v"}, Secrets: map[string]string{"K": "stripe"}}, `secrets["K"]`},
		{"bad secret name", &executorv1.ExecuteRequest{Secrets: map[string]string{"K": "../stripe"}}, `secrets["K"]`},
		{"an inline binding", &executorv1.ExecuteRequest{Policy: &policyv1.Policy{Secrets: p.GetSecrets()}}, "policy.secrets"},
	}
	for _, tt := range shape {
		wantRefused(tt.name, run(tt.req), codes.InvalidArgument, ReasonInvalidArgument, tt.field)
	}
	many := map[string]string{}
	for i := range maxSecrets + 1 {
		many["K"+strings.Repeat("X", i)] = "stripe"
	}
	wantRefused("too many", run(&executorv1.ExecuteRequest{Secrets: many}), codes.InvalidArgument, ReasonInvalidArgument, "secrets")
	wantRefused("not in the store", run(&executorv1.ExecuteRequest{Secrets: map[string]string{"K": "github"}}), codes.PermissionDenied, ReasonSecretNotAllowed, `has no secret "github"`)
	wantRefused("not bound", run(&executorv1.ExecuteRequest{Secrets: map[string]string{"K": "unbound"}}), codes.PermissionDenied, ReasonSecretNotAllowed, `no policy in force binds secret "unbound"`)
	if ran != 0 {
		t.Fatalf("%d sandboxes ran for refused requests", ran)
	}

	if err := run(&executorv1.ExecuteRequest{Secrets: map[string]string{"STRIPE_KEY": "stripe"}}); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "STRIPE_KEY=") })
	if i < 0 || !regexp.MustCompile(`^STRIPE_KEY=sk_test_SPX[A-Za-z0-9]{29}$`).MatchString(env[i]) {
		t.Fatalf("sandbox environment %q: want STRIPE_KEY holding a placeholder", env)
	}
	if slices.ContainsFunc(env, func(kv string) bool { return strings.Contains(kv, stripeValue) }) {
		t.Fatal("the secret's value is in the sandbox's environment")
	}
	if len(got) != 1 || got[0].Name != "stripe" || "STRIPE_KEY="+got[0].Placeholder != env[i] || string(got[0].Value.Reveal()) != stripeValue {
		t.Fatalf("the network got %v, want stripe with the sandbox's placeholder", got)
	}
	if err := errors.New(got[0].Value.String()); strings.Contains(err.Error(), stripeValue) {
		t.Fatal("a Value prints its bytes")
	}
}
