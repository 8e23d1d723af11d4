package decision

import (
	"slices"
	"strings"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/secrets"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Secret is a secret an execution's requests may carry: the sandbox holds
// Placeholder, the proxy swaps it for Value where the binding of Name
// lets it go.
type Secret struct {
	// Env is the sandbox's variable that holds the placeholder.
	Name, Env, Placeholder string
	Value                  secrets.Value
}

// UseSecrets gives the execution its secrets, before its program starts.
func (e *Execution) UseSecrets(s []Secret) {
	m := make(map[string]Secret, len(s))
	for _, x := range s {
		m[secrets.ID(x.Placeholder)] = x
	}
	e.mu.Lock()
	e.secrets = m
	e.mu.Unlock()
}

// placeSecrets checks the placeholders the proxy found in r, decided d by
// pol, against their secrets' bindings in pol. It returns the swaps for
// an allowed request whose every placeholder of this execution is where
// its binding lets it go; a denial with DENIAL_CODE_SECRET_MISUSE when one
// is not (even in audit mode: the placeholder names a secret, and where
// it may go is not rolled out by audit); and the names of the secrets r
// carried, for the log. A placeholder the execution does not know is
// another's or made up: it is left as it is, worth nothing. A request
// denied anyway keeps its own denial and gets no swap.
func (e *Execution) placeSecrets(r *egressv1.HttpRequest, pol *policy.Compiled, d policy.Decision) (policy.Decision, []*egressv1.Swap, []string) {
	found := r.GetPlaceholders()
	if len(found) == 0 {
		return d, nil, nil
	}
	e.mu.Lock()
	known := e.secrets
	e.mu.Unlock()
	req := policyRequest(r)
	var (
		swaps          []*egressv1.Swap
		names          []string
		misuse, misfit string
	)
	for _, f := range found {
		s, ok := known[f.GetId()]
		if !ok {
			continue
		}
		first := !slices.Contains(names, s.Name)
		if first {
			names = append(names, s.Name)
		}
		if misfit != "" {
			continue
		}
		b, bound := pol.SecretBinding(s.Name)
		switch {
		case !bound:
			misfit = "no policy in force binds secret " + s.Name
		case r.GetWebsocket():
			misfit = "secret " + s.Name + " cannot go in a WebSocket upgrade: the proxy does not scrub its frames"
		default:
			misfit = b.Misfit(req, d, placement(f))
			if misfit == "" && !placedAsBound(b, f, s.Placeholder) {
				misfit = "secret " + s.Name + " goes " + b.Placement.String() + asBound(b)
			}
		}
		if misfit != "" {
			misuse = s.Name
			continue
		}
		if first {
			swaps = append(swaps, &egressv1.Swap{Placeholder: s.Placeholder, Value: s.Value.Reveal()})
		}
	}
	switch {
	case !d.Forward():
		return d, nil, names
	case misuse != "":
		e.mu.Lock()
		e.secretMisuse++
		e.mu.Unlock()
		return policy.Decision{Action: policyv1.Action_ACTION_DENY, Decision: policyv1.Decision_DECISION_DENY, RuleID: "secrets." + misuse,
			Reason: misfit, Code: policyv1.DenialCode_DENIAL_CODE_SECRET_MISUSE}, nil, names
	}
	return d, swaps, names
}

// placement is where f was found, as a binding names places; a place no
// binding can name (the path) has no kind.
func placement(f *egressv1.FoundPlaceholder) policy.Placement {
	switch f.GetPlace() {
	case egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_HEADER:
		return policy.Placement{Kind: policy.PlaceHeader, Name: f.GetName()}
	case egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_BASIC:
		return policy.Placement{Kind: policy.PlaceBasic}
	case egressv1.PlaceholderPlace_PLACEHOLDER_PLACE_QUERY:
		return policy.Placement{Kind: policy.PlaceQuery, Name: f.GetName()}
	}
	return policy.Placement{}
}

// placedAsBound reports whether the value f was found in is exactly what
// b makes of the placeholder: a header's whole value its template, the
// user name or the password of basic credentials, a query parameter's
// whole value. Anything around the placeholder would travel with the
// secret.
func placedAsBound(b policy.Binding, f *egressv1.FoundPlaceholder, placeholder string) bool {
	v := f.GetValue()
	switch b.Placement.Kind {
	case policy.PlaceHeader:
		return v == b.Placement.Render(placeholder)
	case policy.PlaceBasic:
		user, pass, _ := strings.Cut(v, ":")
		return user == placeholder || pass == placeholder
	case policy.PlaceQuery:
		return v == placeholder
	}
	return false
}

func asBound(b policy.Binding) string {
	if b.Placement.Kind == policy.PlaceHeader {
		return ", as the whole value " + b.Placement.Template + " with the placeholder for {{secret}}"
	}
	return ", as the whole value"
}
