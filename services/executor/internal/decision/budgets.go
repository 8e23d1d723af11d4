package decision

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"golang.org/x/time/rate"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Rule ids of the refusals by an execution's budgets (README: Limits).
const (
	ruleTotalRequestBytes  = "limits.max_total_request_bytes"
	ruleTotalResponseBytes = "limits.max_total_response_bytes"
	ruleConcurrent         = "limits.max_concurrent_connections"
)

// grant is what an allowed request holds of its execution's budgets until
// its outcome settles it.
type grant struct {
	// held: the request counts as an open upstream exchange.
	held bool
	// reserved request body bytes: what it declared, or with no declared
	// length all that was left of the total.
	reserved uint64
	// The most body bytes the proxy may forward, and return; 0 for no
	// limit.
	maxRequest, maxResponse uint64
	// retryAfter, on a refusal by a rate or the concurrency limit, is the
	// seconds for the proxy's Retry-After.
	retryAfter uint32
	// swaps are the secrets the proxy places into the request; secrets
	// names the secrets whose placeholders it carried (placeSecrets).
	swaps   []*egressv1.Swap
	secrets []string
}

// usage is an execution's use of its budgets; Execution.mu guards it.
// Every allowed request is counted here and nowhere else, so the Result's
// figures are the ones the budgets were enforced on.
type usage struct {
	requestBytes, responseBytes uint64 // settled by outcomes
	reservedRequestBytes        uint64 // held by requests in flight
	open, peakOpen              uint32 // upstream exchanges in flight
	overRate                    uint32 // refused by a rate or max_concurrent_connections
	// buckets are the token buckets of the rules with a rate, by layer
	// and rule id: at most one for each rule of the policy in force.
	buckets map[string]*rate.Limiter
}

// admit applies the execution's budgets to a request its policy let
// through, whose declared body length is contentLength (-1 when unknown):
// the rates of the rules that allowed it, then the open exchanges, then
// the totals. A refusal takes nothing: a refused request spends no token
// of any bucket.
func (e *Execution) admit(d policy.Decision, contentLength int64, l policy.Limits) (policy.Decision, grant) {
	// A refusal with a retry (a rate, the open exchanges) is rate_limited,
	// one by a total budget_exceeded.
	refuse := func(rule, reason string, retryAfter uint32) (policy.Decision, grant) {
		code := policyv1.DenialCode_DENIAL_CODE_BUDGET_EXCEEDED
		if retryAfter > 0 {
			e.use.overRate++
			code = policyv1.DenialCode_DENIAL_CODE_RATE_LIMITED
		}
		return policy.Decision{Action: policyv1.Action_ACTION_DENY, Decision: policyv1.Decision_DECISION_DENY, RuleID: rule, Reason: reason, Source: d.Source, Layer: d.Layer, Code: code},
			grant{retryAfter: retryAfter}
	}
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	u := &e.use
	limiters := make([]*rate.Limiter, len(d.Rates))
	for i, r := range d.Rates {
		key := strconv.Itoa(r.Layer) + "/" + r.RuleID
		lim, ok := u.buckets[key]
		if !ok {
			if u.buckets == nil {
				u.buckets = map[string]*rate.Limiter{}
			}
			lim = rate.NewLimiter(rate.Limit(r.PerSecond), int(r.Burst))
			u.buckets[key] = lim
		}
		if tokens := lim.TokensAt(now); tokens < 1 {
			wait := (1 - tokens) / float64(r.PerSecond)
			return refuse(r.RuleID, fmt.Sprintf("rule %s allows %d requests a second (bursts of %d); retry in %.2fs", r.RuleID, r.PerSecond, r.Burst, wait),
				uint32(max(1, math.Ceil(wait))))
		}
		limiters[i] = lim
	}
	if m := l.MaxConcurrentConnections; m > 0 && u.open >= m {
		return refuse(ruleConcurrent, fmt.Sprintf("the execution may have %d upstream exchanges open at once", m), 1)
	}
	var g grant
	if m := l.MaxTotalRequestBytes; m > 0 {
		left := m - min(m, u.requestBytes+u.reservedRequestBytes)
		switch {
		case contentLength > 0 && uint64(contentLength) > left:
			return refuse(ruleTotalRequestBytes, fmt.Sprintf("request body of %d bytes is above the %d bytes left of the execution's %d", contentLength, left, m), 0)
		case contentLength < 0 && left == 0:
			return refuse(ruleTotalRequestBytes, fmt.Sprintf("the execution's %d request body bytes are spent", m), 0)
		case contentLength < 0:
			g.reserved = left
		default:
			g.reserved = uint64(contentLength)
		}
		g.maxRequest = left
	}
	if m := l.MaxTotalResponseBytes; m > 0 {
		left := m - min(m, u.responseBytes)
		if left == 0 {
			return refuse(ruleTotalResponseBytes, fmt.Sprintf("the execution's %d response body bytes are spent", m), 0)
		}
		g.maxResponse = left
	}
	for _, lim := range limiters {
		lim.AllowN(now, 1)
	}
	g.held = true
	u.open++
	u.peakOpen = max(u.peakOpen, u.open)
	u.reservedRequestBytes += g.reserved
	return d, g
}

// settle ends what an allowed request held, counting the body bytes it
// sent and received.
func (e *Execution) settle(g grant, sent, received uint64) {
	if !g.held {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.use.open--
	e.use.reservedRequestBytes -= g.reserved
	e.use.requestBytes += sent
	e.use.responseBytes += received
}
