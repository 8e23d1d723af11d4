package server

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/secrets"
	"github.com/sandpit-run/sandpit/services/policy"
)

// ReasonSecretNotAllowed refuses a request naming a secret its caller may
// not use: the store has no such secret of the caller's tenant, or no
// policy in force binds it.
const ReasonSecretNotAllowed = "SECRET_NOT_ALLOWED"

// bindSecrets resolves req.secrets for tenant under chain, the policy the
// execution will be decided by: each secret must be in the store (the
// tenant's, or the executor's without tenants) and bound by a policy of
// the chain. It mints a placeholder for each, in its binding's shape. The
// error names the variable and the secret, never a value.
func (s *Service) bindSecrets(req *executorv1.ExecuteRequest, tenant string, chain *policy.Compiled) ([]decision.Secret, error) {
	if len(req.GetSecrets()) == 0 {
		return nil, nil
	}
	refuse := func(env, why string) error {
		return statusError(codes.PermissionDenied, ReasonSecretNotAllowed, fmt.Sprintf("secrets[%q]: %s", env, why),
			map[string]string{"field": fmt.Sprintf("secrets[%q]", env)})
	}
	envs := make([]string, 0, len(req.GetSecrets()))
	for env := range req.GetSecrets() {
		envs = append(envs, env)
	}
	slices.Sort(envs) // the first refusal is the same every time
	switch {
	case s.cfg.Egress == nil || chain == nil:
		return nil, refuse(envs[0], "this executor has no egress proxy configured, so no secret can reach a request")
	case s.cfg.Secrets == nil:
		return nil, refuse(envs[0], "this executor has no secret store (--secrets-dir or "+secrets.EnvPrefix+"* variables)")
	}
	var out []decision.Secret
	for _, env := range envs {
		name := req.GetSecrets()[env]
		b, ok := chain.SecretBinding(name)
		if !ok {
			return nil, refuse(env, fmt.Sprintf("no policy in force binds secret %q", name))
		}
		v, err := s.cfg.Secrets.Lookup(tenant, name)
		if errors.Is(err, secrets.ErrNotFound) {
			owner := "the executor"
			if tenant != "" {
				owner = "tenant " + tenant
			}
			return nil, refuse(env, fmt.Sprintf("%s has no secret %q", owner, name))
		}
		if err != nil {
			return nil, refuse(env, err.Error())
		}
		out = append(out, decision.Secret{Name: name, Env: env, Placeholder: secrets.Placeholder(b.PlaceholderPrefix), Value: v})
	}
	return out, nil
}

// secretEnv is the environment the sandbox gets for its secrets: each
// variable holds its placeholder.
func secretEnv(ss []decision.Secret) []string {
	env := make([]string, len(ss))
	for i, x := range ss {
		env[i] = x.Env + "=" + x.Placeholder
	}
	return env
}

// secretNames lists the secrets of ss, for the log.
func secretNames(ss []decision.Secret) string {
	names := make([]string, len(ss))
	for i, x := range ss {
		names[i] = x.Name
	}
	return strings.Join(names, ",")
}
