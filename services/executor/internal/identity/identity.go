// Package identity authenticates the executor's callers by JWT bearer
// tokens and maps a token's claims to a tenant, a tier and a policy that
// narrows the caller's executions.
package identity

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sandpit-run/sandpit/services/policy"
)

// Defaults of Config.
const (
	DefaultSkew        = 30 * time.Second
	DefaultTenantClaim = "sub"
	DefaultTierClaim   = "tier"
)

// The claims of the prototype's shape that narrow the caller's policy.
const (
	ClaimAllowedDomains = "allowedDomains"
	ClaimAPILimits      = "apiLimits"
)

// Config says which tokens are accepted. At least one key source must be set.
type Config struct {
	// HS256SecretFile holds the shared secret of HS256 tokens.
	HS256SecretFile string
	// PublicKeyFiles are PEM public keys (RSA, ECDSA P-256, Ed25519) of
	// RS256, ES256 and EdDSA tokens.
	PublicKeyFiles []string
	// JWKSFile is a JSON Web Key Set of the same kinds of keys, read again
	// when it changes.
	JWKSFile string
	// Issuer and Audience, when set, must be the token's iss and be in its
	// aud.
	Issuer, Audience string
	// Skew is the clock skew allowed on exp and nbf.
	Skew time.Duration
	// TenantClaim and TierClaim name the claims of tenant and tier.
	TenantClaim, TierClaim string
}

// Enabled says whether callers are to be authenticated.
func (c Config) Enabled() bool {
	return c.HS256SecretFile != "" || len(c.PublicKeyFiles) > 0 || c.JWKSFile != ""
}

// Identity is an authenticated caller.
type Identity struct {
	Tenant, Tier string
	// Policy narrows the caller's executions; nil when the token has
	// neither allowedDomains nor apiLimits.
	Policy *policy.Compiled
}

// Reasons a token is refused, for google.rpc.ErrorInfo.
const (
	ReasonMissing      = "TOKEN_MISSING"
	ReasonMalformed    = "TOKEN_MALFORMED"
	ReasonExpired      = "TOKEN_EXPIRED"
	ReasonNotYetValid  = "TOKEN_NOT_YET_VALID"
	ReasonBadSignature = "TOKEN_BAD_SIGNATURE"
	ReasonWrongIssuer  = "TOKEN_WRONG_ISSUER"
	ReasonWrongAud     = "TOKEN_WRONG_AUDIENCE"
	ReasonNoTenant     = "TOKEN_NO_TENANT"
	ReasonBadClaims    = "TOKEN_BAD_CLAIMS"
)

// Error is why a token was refused.
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Verifier checks tokens. It is safe for concurrent use.
type Verifier struct {
	cfg    Config
	secret []byte
	keys   []crypto.PublicKey
	jwks   *jwksFile
	parser *jwt.Parser
	log    *slog.Logger
}

// New reads the keys cfg names; log is told when the JWKS file stops
// loading (callers are told only that no key verifies).
func New(cfg Config, log *slog.Logger) (*Verifier, error) {
	if !cfg.Enabled() {
		return nil, errors.New("jwt: no key (a secret file, public key files or a JWKS file) is configured")
	}
	if cfg.Skew < 0 {
		return nil, fmt.Errorf("jwt clock skew %v is negative", cfg.Skew)
	}
	if cfg.TenantClaim == "" {
		cfg.TenantClaim = DefaultTenantClaim
	}
	if cfg.TierClaim == "" {
		cfg.TierClaim = DefaultTierClaim
	}
	v := &Verifier{cfg: cfg, log: log}
	var methods []string
	if cfg.HS256SecretFile != "" {
		b, err := os.ReadFile(cfg.HS256SecretFile)
		if err != nil {
			return nil, fmt.Errorf("jwt secret: %w", err)
		}
		if v.secret = []byte(strings.TrimSpace(string(b))); len(v.secret) < 32 {
			return nil, fmt.Errorf("jwt secret %s: %d bytes, want at least 32", cfg.HS256SecretFile, len(v.secret))
		}
		methods = append(methods, "HS256")
	}
	for _, f := range cfg.PublicKeyFiles {
		k, err := readPublicKey(f)
		if err != nil {
			return nil, err
		}
		v.keys = append(v.keys, k)
	}
	if cfg.JWKSFile != "" {
		v.jwks = &jwksFile{path: cfg.JWKSFile}
		if _, err := v.jwks.load(); err != nil {
			return nil, err
		}
	}
	if len(v.keys) > 0 || v.jwks != nil {
		methods = append(methods, "RS256", "ES256", "EdDSA")
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithLeeway(cfg.Skew), jwt.WithExpirationRequired()}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

func readPublicKey(path string) (crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("jwt public key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("jwt public key %s: no PEM block", path)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("jwt public key %s: %w", path, err)
	}
	if err := checkKey(k); err != nil {
		return nil, fmt.Errorf("jwt public key %s: %w", path, err)
	}
	return k, nil
}

// Verify checks a token and maps its claims; its error is an *Error.
func (v *Verifier) Verify(token string) (Identity, error) {
	if token == "" {
		return Identity{}, &Error{ReasonMissing, errors.New("no bearer token: send the metadata authorization: Bearer <JWT>")}
	}
	claims := jwt.MapClaims{}
	if _, err := v.parser.ParseWithClaims(token, claims, v.keyFor); err != nil {
		return Identity{}, &Error{reasonOf(err), fmt.Errorf("token refused: %w", err)}
	}
	return v.identity(claims)
}

// keyFor picks the keys that may have signed t: the secret for HS256, else
// the JWKS key its kid names, or every public key of its algorithm's kind.
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	if alg == "HS256" {
		if v.secret == nil {
			return nil, errors.New("HS256 tokens are not accepted here")
		}
		return v.secret, nil
	}
	var set jwt.VerificationKeySet
	kid, _ := t.Header["kid"].(string)
	if v.jwks != nil {
		keys, err := v.jwks.load()
		if err != nil {
			v.log.Error("jwks file does not load; tokens it should verify are refused", "error", err)
			return nil, errors.New("the executor's key set cannot be read; its log says why")
		}
		for _, k := range keys {
			if (kid == "" || k.kid == kid) && fitsAlg(k.key, alg) {
				set.Keys = append(set.Keys, k.key)
			}
		}
	}
	for _, k := range v.keys {
		if fitsAlg(k, alg) {
			set.Keys = append(set.Keys, k)
		}
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("no key of the executor's verifies %s tokens (kid %q)", alg, kid)
	}
	return set, nil
}

func reasonOf(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return ReasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return ReasonNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ReasonWrongIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ReasonWrongAud
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return ReasonBadSignature
	case errors.Is(err, jwt.ErrTokenMalformed):
		return ReasonMalformed
	default:
		// A required claim missing (exp) or of the wrong type.
		return ReasonBadClaims
	}
}

// identity maps verified claims; a token without the tenant claim is
// refused, never given a default.
func (v *Verifier) identity(claims jwt.MapClaims) (Identity, error) {
	tenant, _ := claims[v.cfg.TenantClaim].(string)
	if tenant == "" {
		return Identity{}, &Error{ReasonNoTenant, fmt.Errorf("the token has no tenant claim %q (a non-empty string)", v.cfg.TenantClaim)}
	}
	id := Identity{Tenant: tenant}
	if t, ok := claims[v.cfg.TierClaim]; ok {
		if id.Tier, ok = t.(string); !ok {
			return Identity{}, &Error{ReasonBadClaims, fmt.Errorf("the token's tier claim %q is not a string", v.cfg.TierClaim)}
		}
	}
	domains, dok, err := stringList(claims[ClaimAllowedDomains])
	if err != nil {
		return Identity{}, &Error{ReasonBadClaims, fmt.Errorf("claim %s: %w", ClaimAllowedDomains, err)}
	}
	revoked, lok, err := revokedRules(claims[ClaimAPILimits])
	if err != nil {
		return Identity{}, &Error{ReasonBadClaims, fmt.Errorf("claim %s: %w", ClaimAPILimits, err)}
	}
	if !dok && !lok {
		return id, nil
	}
	if !dok {
		domains = nil
	}
	if id.Policy, err = policy.Claims(domains, revoked); err != nil {
		return Identity{}, &Error{ReasonBadClaims, fmt.Errorf("claim %w", err)}
	}
	return id, nil
}

// stringList reads a JSON array of strings; ok is whether it was present.
func stringList(v any) (list []string, ok bool, err error) {
	if v == nil {
		return nil, false, nil
	}
	a, isList := v.([]any)
	if !isList {
		return nil, true, errors.New("not a list of host patterns")
	}
	list = []string{}
	for i, e := range a {
		s, isStr := e.(string)
		if !isStr {
			return nil, true, fmt.Errorf("[%d] is not a string", i)
		}
		list = append(list, s)
	}
	return list, true, nil
}

// revokedRules reads a JSON object of rule ids to booleans and returns the
// ids mapped to false; ok is whether it was present.
func revokedRules(v any) (ids []string, ok bool, err error) {
	if v == nil {
		return nil, false, nil
	}
	m, isMap := v.(map[string]any)
	if !isMap {
		return nil, true, errors.New("not an object of rule ids to true or false")
	}
	for id, e := range m {
		b, isBool := e.(bool)
		if !isBool {
			return nil, true, fmt.Errorf("%s is not true or false", id)
		}
		if !b {
			ids = append(ids, id)
		}
	}
	return ids, true, nil
}

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext is the caller's identity, if it was authenticated.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}
