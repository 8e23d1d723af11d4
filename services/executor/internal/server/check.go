package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/identity"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/policy"
	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// MaxCheckRequests bounds the requests of one Check call.
const MaxCheckRequests = 1000

// maxCheckURLBytes bounds one checked URL, as the proxy bounds a request
// target it logs.
const maxCheckURLBytes = 8 << 10

// ReasonTenantMismatch refuses a Check for a tenant other than the caller's.
const ReasonTenantMismatch = "TENANT_MISMATCH"

// PolicyService implements policyv1.PolicyServiceServer: the decisions an
// execution of the caller would get, without running anything.
type PolicyService struct {
	policyv1.UnimplementedPolicyServiceServer

	svc *Service
	// tokens verifies CheckRequest.token; nil when callers are not
	// authenticated by token.
	tokens *identity.Verifier
}

// NewPolicyService returns the Check service over svc's configuration;
// tokens (nil for none) verifies the tokens a request names.
func NewPolicyService(svc *Service, tokens *identity.Verifier) *PolicyService {
	return &PolicyService{svc: svc, tokens: tokens}
}

// Check decides each request as an execution of the same caller would.
func (p *PolicyService) Check(ctx context.Context, req *policyv1.CheckRequest) (*policyv1.CheckResponse, error) {
	var vs []limits.Violation
	bad := func(field, format string, args ...any) {
		vs = append(vs, limits.Violation{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	switch n := len(req.GetRequests()); {
	case n == 0:
		bad("requests", "name at least one request")
	case n > MaxCheckRequests:
		bad("requests", "%d requests, at most %d are allowed", n, MaxCheckRequests)
	}
	if req.GetToken() != "" && (req.GetTenant() != "" || req.GetTier() != "") {
		bad("token", "set either token or tenant and tier, not both")
	}
	inline := inlinePolicy(req.GetPolicy(), bad)
	reqs := make([]policy.Request, len(req.GetRequests()))
	if len(vs) == 0 {
		for i, r := range req.GetRequests() {
			pr, err := checkedRequest(r)
			if err != nil {
				bad(fmt.Sprintf("requests[%d]", i), "%v", err)
			}
			reqs[i] = pr
		}
	}
	if len(vs) > 0 {
		return nil, invalidArgument(vs)
	}

	ident, authed, err := p.whose(ctx, req)
	if err != nil {
		return nil, err
	}
	g, err := p.svc.cfg.Tenancy.resolve(ident, authed, inline)
	if err != nil {
		return nil, err
	}
	if p.svc.cfg.Egress == nil {
		return nil, statusError(codes.FailedPrecondition, ReasonInternal,
			"this executor has no egress proxy configured: sandboxes have loopback only, and every request fails", nil)
	}
	pol := p.svc.cfg.Egress.Policy(g.policy)
	resp := &policyv1.CheckResponse{Tenant: g.ident.Tenant, Tier: g.ident.Tier, Mode: pol.Mode()}
	for _, r := range reqs {
		resp.Verdicts = append(resp.Verdicts, verdict(pol, r))
	}
	return resp, nil
}

// verdict decides r as the decision service would: an https request to a
// host the chain passes through (policy.DecideTLS) is decided whole at
// the handshake, by the pass-through entry, and never by its method or
// path; any other request by its rules.
func verdict(pol *policy.Compiled, r policy.Request) *policyv1.Verdict {
	if r.Scheme == policy.SchemeHTTPS {
		if td := pol.DecideTLS(r.Host, r.Port); td.Passthrough {
			return &policyv1.Verdict{Decision: td.Decision, RuleId: td.RuleID, Source: td.Source, Reason: td.Reason, DenialCode: td.Code, Passthrough: true}
		}
	}
	d := pol.Decide(r)
	return &policyv1.Verdict{Decision: d.Decision, RuleId: d.RuleID, Source: d.Source, Reason: d.Reason, DenialCode: d.Code}
}

// whose is the identity a Check decides for: the request's token's, the
// caller's own, or (on an executor that does not authenticate callers) the
// tenant and tier the request names.
func (p *PolicyService) whose(ctx context.Context, req *policyv1.CheckRequest) (identity.Identity, bool, error) {
	if req.GetToken() != "" {
		if p.tokens == nil {
			return identity.Identity{}, false, statusError(codes.FailedPrecondition, ReasonInvalidArgument,
				"this executor does not authenticate callers by token; name a tenant instead", map[string]string{"field": "token"})
		}
		id, err := verify(p.tokens, req.GetToken(), "token: ", map[string]string{"field": "token"})
		return id, err == nil, err
	}
	if t := p.svc.cfg.Tenancy; (t == nil || t.Source == nil) && (req.GetTenant() != "" || req.GetTier() != "") {
		return identity.Identity{}, false, statusError(codes.FailedPrecondition, ReasonTenantUnknown,
			"this executor serves no tenants; leave tenant and tier empty", map[string]string{"field": "tenant"})
	}
	caller, authed := p.svc.cfg.Tenancy.caller(ctx)
	if !authed {
		// Nobody is authenticated here: any tenant of the store may be
		// checked (and without a store, none).
		return identity.Identity{Tenant: req.GetTenant(), Tier: req.GetTier()}, req.GetTenant() != "", nil
	}
	if t := req.GetTenant(); t != "" && t != caller.Tenant || req.GetTier() != "" && req.GetTier() != caller.Tier {
		return caller, true, statusError(codes.PermissionDenied, ReasonTenantMismatch,
			"a caller may check only its own tenant and tier ("+strconv.Quote(caller.Tenant)+", "+strconv.Quote(caller.Tier)+")",
			map[string]string{"tenant": req.GetTenant(), "tier": req.GetTier()})
	}
	return caller, true, nil
}

// checkedRequest turns a method and absolute URL into the request the
// proxy would ask about: the canonical host, port and path the proxy
// computes from the same request.
func checkedRequest(r *policyv1.CheckedRequest) (policy.Request, error) {
	raw := r.GetUrl()
	if len(raw) > maxCheckURLBytes {
		return policy.Request{}, fmt.Errorf("url is %d bytes, at most %d are allowed", len(raw), maxCheckURLBytes)
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	scheme = strings.ToLower(scheme)
	if !ok || scheme != policy.SchemeHTTPS && scheme != policy.SchemeHTTP {
		return policy.Request{}, errors.New("url must be absolute, http:// or https://")
	}
	authority, target := rest, "/"
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, target = rest[:i], rest[i:]
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
	}
	if strings.Contains(authority, "@") {
		return policy.Request{}, errors.New("url must not carry user information")
	}
	h, port, err := canon.SplitHostPort(authority)
	if err != nil {
		return policy.Request{}, fmt.Errorf("url host: %w", err)
	}
	path, _, err := canon.CanonicalTarget(target)
	if err != nil {
		return policy.Request{}, fmt.Errorf("url path: %w", err)
	}
	pr := policy.Request{Method: r.GetMethod(), Host: h.Name, Path: path, Scheme: scheme}
	if port != "" {
		n, _ := strconv.ParseUint(port, 10, 16) // SplitHostPort checked it
		pr.Port = uint32(n)
	}
	if pr.Method == "" {
		pr.Method = "GET"
	}
	return pr, nil
}
