package server

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sandpit-run/sandpit/services/daemon/grpcserve"
	"github.com/sandpit-run/sandpit/services/executor/internal/identity"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/tenants"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Names of the policy sources, in the order they narrow: what
// NetworkEvent.source and Verdict.source say.
const (
	SourceOperator = "operator"
	SourceTenant   = "tenant"
	SourceToken    = "token"
	SourceInline   = "inline"
)

// Reasons of refusals by tenant.
const (
	ReasonIdentityRequired    = "IDENTITY_REQUIRED"
	ReasonTenantUnknown       = "TENANT_UNKNOWN"
	ReasonTierUnknown         = "TIER_UNKNOWN"
	ReasonTenantLimitExceeded = "TENANT_LIMIT_EXCEEDED"
	ReasonTenantQuotaExceeded = "TENANT_QUOTA_EXCEEDED"
)

// Names of the tenant limits, as ErrorInfo's "limit" and the tenants file
// say them.
const (
	limitMaxConcurrent  = "max_concurrent"
	limitPerMinute      = "executions_per_minute"
	limitMaxTimeout     = "max_timeout"
	limitMaxMemory      = "max_memory"
	limitsFieldTimeout  = "limits.timeout"
	limitsFieldMemory   = "limits.memory_bytes"
	tenantKeySeparator  = "\x00"
	tenantRateRetryBase = time.Second
)

// Tenancy is who the callers are and what each may do: the tenants store,
// and the state of each tenant's quotas. Its zero value (no store) lets
// every caller run under the operator's policy alone.
type Tenancy struct {
	// Source is the tenants store; nil runs without tenants.
	Source tenants.Source
	// CertTenants takes a caller's tenant from its verified client
	// certificate's common name when the call has no token (mTLS as the
	// alternative to JWT).
	CertTenants bool

	mu    sync.Mutex
	quota map[string]*quota
}

// quota is one tenant's (or tenant and tier's) use of its limits.
type quota struct {
	running uint32
	perMin  *rate.Limiter // nil without executions_per_minute
}

// grant is what one execution's caller gets: its tenant's entry, with the
// tenant's own limits beside the tier's for the quotas counted per tenant.
type grant struct {
	ident  identity.Identity
	entry  tenants.Entry
	tenant tenants.Limits // the tenant's own, when entry is a tier's
	// policy narrows the operator's: the tenant's, the token's and the
	// inline one, named by source. Nil for none.
	policy *policy.Compiled
}

// caller returns the call's identity: the token's, or with CertTenants the
// client certificate's, and whether it has one.
func (t *Tenancy) caller(ctx context.Context) (identity.Identity, bool) {
	if id, ok := identity.FromContext(ctx); ok {
		return id, true
	}
	if t != nil && t.CertTenants {
		if c, ok := grpcserve.VerifiedClient(ctx); ok && c.CommonName != "" {
			return identity.Identity{Tenant: c.CommonName}, true
		}
	}
	return identity.Identity{}, false
}

// resolve finds what ident gets with the inline policy: without a store,
// the token's narrowing; with one, its tenant's (or tier's) entry. An
// unknown tenant or tier is refused: there is no default tenant.
func (t *Tenancy) resolve(ident identity.Identity, authed bool, inline *policy.Compiled) (grant, error) {
	g := grant{ident: ident}
	token := ident.Policy
	if token != nil {
		token = token.From(SourceToken)
	}
	if inline != nil {
		inline = inline.From(SourceInline)
	}
	if t == nil || t.Source == nil {
		g.policy = narrowed(token, inline)
		return g, nil
	}
	if !authed || ident.Tenant == "" {
		return g, statusError(codes.Unauthenticated, ReasonIdentityRequired,
			"this executor serves tenants: the call must name one (a token's tenant claim, or a client certificate)", nil)
	}
	set := t.Source.Current()
	entry, err := set.Lookup(ident.Tenant, ident.Tier)
	meta := map[string]string{"tenant": ident.Tenant, "tier": ident.Tier}
	switch {
	case errors.Is(err, tenants.ErrUnknownTenant):
		return g, statusError(codes.PermissionDenied, ReasonTenantUnknown, "tenant "+strconv.Quote(ident.Tenant)+" is not in the executor's tenants", meta)
	case errors.Is(err, tenants.ErrUnknownTier):
		return g, statusError(codes.PermissionDenied, ReasonTierUnknown,
			"tier "+strconv.Quote(ident.Tier)+" is not a tier of tenant "+strconv.Quote(ident.Tenant), meta)
	case err != nil:
		return g, statusError(codes.Internal, ReasonInternal, "the tenants could not be read", nil)
	}
	own, _ := set.Lookup(ident.Tenant, "")
	g.entry, g.tenant = entry, own.Limits
	tp := entry.Policy.From(SourceTenant)
	if entry.Audit {
		tp = tp.Audited()
	}
	if entry.Limits.MaxRequests > 0 {
		tp = tp.Narrowed(policy.Limits{MaxRequests: entry.Limits.MaxRequests})
	}
	g.policy = policy.Chain(tp, token, inline)
	return g, nil
}

// narrowed chains the policies that are set; nil when none is.
func narrowed(ps ...*policy.Compiled) *policy.Compiled {
	var set []*policy.Compiled
	for _, p := range ps {
		if p != nil {
			set = append(set, p)
		}
	}
	if len(set) == 0 {
		return nil
	}
	return policy.Chain(set[0], set[1:]...)
}

// fitLimits holds the execution's limits to its tenant's: a timeout or
// memory limit the request asks for above the tenant's maximum is refused;
// a default above it is lowered to it.
func (g grant) fitLimits(req *limits.Set, asked func(field string) bool) error {
	lim := g.entry.Limits
	if lim.MaxTimeout > 0 && req.Timeout > lim.MaxTimeout {
		if asked(limitsFieldTimeout) {
			return g.overLimit(limitMaxTimeout, lim.MaxTimeout.String(), limitsFieldTimeout+" "+req.Timeout.String())
		}
		req.Timeout = lim.MaxTimeout // at least the floor: the tenants file checks it
	}
	if lim.MaxMemoryBytes > 0 && req.MemoryBytes > lim.MaxMemoryBytes {
		if asked(limitsFieldMemory) {
			return g.overLimit(limitMaxMemory, policy.FormatByteSize(lim.MaxMemoryBytes), limitsFieldMemory+" "+strconv.FormatUint(req.MemoryBytes, 10))
		}
		req.MemoryBytes = lim.MaxMemoryBytes
	}
	return nil
}

func (g grant) overLimit(limit, value, asked string) error {
	return statusError(codes.PermissionDenied, ReasonTenantLimitExceeded,
		asked+" is above tenant "+strconv.Quote(g.entry.Tenant)+"'s "+limit+" of "+value,
		map[string]string{"tenant": g.entry.Tenant, "tier": g.entry.Tier, "limit": limit, "value": value})
}

// admit counts an execution of g's tenant against its quotas (concurrent
// executions and executions a minute, the tenant's and its tier's) and
// returns the function that ends it; over a quota it is ResourceExhausted
// naming the limit.
func (t *Tenancy) admit(g grant) (func(), error) {
	if t == nil || t.Source == nil {
		return func() {}, nil
	}
	type counted struct {
		key string
		lim tenants.Limits
	}
	keys := []counted{{g.entry.Tenant, g.tenant}}
	if g.entry.Tier != "" {
		keys = append(keys, counted{g.entry.Tenant + tenantKeySeparator + g.entry.Tier, g.entry.Limits})
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.quota == nil {
		t.quota = map[string]*quota{}
	}
	qs := make([]*quota, len(keys))
	for i, k := range keys {
		q := t.quota[k.key]
		if q == nil {
			q = &quota{}
			t.quota[k.key] = q
		}
		qs[i] = q
		if k.lim.MaxConcurrent > 0 && q.running >= k.lim.MaxConcurrent {
			for j := range keys[:i+1] {
				t.forget(keys[j].key, qs[j])
			}
			return nil, g.overQuota(limitMaxConcurrent, strconv.FormatUint(uint64(k.lim.MaxConcurrent), 10), retryAfter)
		}
	}
	// Rates are taken only once every concurrency limit has room, and
	// given back when a later key refuses, so a refused execution spends
	// no rate.
	var taken []*rate.Reservation
	for i, k := range keys {
		q := qs[i]
		if k.lim.ExecutionsPerMinute == 0 {
			q.perMin = nil
			continue
		}
		every := rate.Every(time.Minute / time.Duration(k.lim.ExecutionsPerMinute))
		if q.perMin == nil {
			q.perMin = rate.NewLimiter(every, int(k.lim.ExecutionsPerMinute))
		} else if q.perMin.Limit() != every || q.perMin.Burst() != int(k.lim.ExecutionsPerMinute) {
			// The tenants changed: the new limit applies from now.
			q.perMin.SetLimit(every)
			q.perMin.SetBurst(int(k.lim.ExecutionsPerMinute))
		}
		r := q.perMin.Reserve()
		if d := r.Delay(); d > 0 {
			r.Cancel()
			for _, tr := range taken {
				tr.Cancel()
			}
			for j := range keys[:i+1] {
				t.forget(keys[j].key, qs[j])
			}
			return nil, g.overQuota(limitPerMinute, strconv.FormatUint(uint64(k.lim.ExecutionsPerMinute), 10), max(d, tenantRateRetryBase))
		}
		taken = append(taken, r)
	}
	for _, q := range qs {
		q.running++
	}
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		for i, q := range qs {
			q.running--
			t.forget(keys[i].key, q)
		}
	}, nil
}

// forget drops q when it holds nothing: no execution running and its rate
// back to full, so the map holds only tenants in use. t.mu is held.
func (t *Tenancy) forget(key string, q *quota) {
	if q.running == 0 && (q.perMin == nil || q.perMin.Tokens() >= float64(q.perMin.Burst())) {
		delete(t.quota, key)
	}
}

func (g grant) overQuota(limit, value string, retryIn time.Duration) error {
	return statusError(codes.ResourceExhausted, ReasonTenantQuotaExceeded,
		"tenant "+strconv.Quote(g.entry.Tenant)+" is at its "+limit+" of "+value+"; retry later",
		map[string]string{"tenant": g.entry.Tenant, "tier": g.entry.Tier, "limit": limit, "value": value},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(retryIn)})
}
