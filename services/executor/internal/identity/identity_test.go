package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/sandpit-run/sandpit/services/policy"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

const testSecret = "0123456789abcdef0123456789abcdef"

// seedPayload is the prototype's JWT payload example, as written.
const seedPayload = `{
    "sub": "user_123",
    "tier": "pro",
    "allowedDomains": ["api.stripe.com"],
    "apiLimits": {
        "stripe_products": true,
        "stripe_charges": false
    }
}`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// claims is a valid claim set for iss "sandpit-test", aud "executor".
func claims(extra jwt.MapClaims) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "tenant-a", "tier": "free", "iss": "sandpit-test", "aud": "executor", "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func sign(t *testing.T, m jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hsVerifier(t *testing.T, cfg Config) *Verifier {
	t.Helper()
	cfg.HS256SecretFile = writeFile(t, "secret", testSecret+"\n")
	cfg.Issuer, cfg.Audience, cfg.Skew = "sandpit-test", "executor", DefaultSkew
	v, err := New(cfg, discard)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func reason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// TestBadTokens: each way a token can be wrong has its own reason.
func TestBadTokens(t *testing.T) {
	v := hsVerifier(t, Config{})
	key := []byte(testSecret)
	now := time.Now()
	tests := []struct {
		name, token, reason string
	}{
		{name: "missing", token: "", reason: ReasonMissing},
		{name: "not a JWT", token: "abc.def", reason: ReasonMalformed},
		{name: "expired", token: sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"exp": now.Add(-time.Minute).Unix()})), reason: ReasonExpired},
		{name: "not yet valid", token: sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"nbf": now.Add(time.Minute).Unix()})), reason: ReasonNotYetValid},
		{name: "badly signed", token: sign(t, jwt.SigningMethodHS256, []byte("another secret of 32 bytes......"), "", claims(nil)), reason: ReasonBadSignature},
		{name: "alg none", token: sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claims(nil)), reason: ReasonBadSignature},
		{name: "wrong issuer", token: sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"iss": "someone-else"})), reason: ReasonWrongIssuer},
		{name: "wrong audience", token: sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"aud": "other"})), reason: ReasonWrongAud},
		{name: "no exp", token: sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"exp": nil})), reason: ReasonBadClaims},
		{name: "no tenant", token: sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"sub": nil})), reason: ReasonNoTenant},
		{name: "empty tenant", token: sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"sub": ""})), reason: ReasonNoTenant},
		{name: "allowedDomains not a list", token: sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"allowedDomains": "api.stripe.com"})), reason: ReasonBadClaims},
		{name: "bad host pattern", token: sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"allowedDomains": []string{"a b"}})), reason: ReasonBadClaims},
		{name: "apiLimits not booleans", token: sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"apiLimits": map[string]any{"r": "no"}})), reason: ReasonBadClaims},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.Verify(tt.token)
			if got := reason(err); got != tt.reason {
				t.Errorf("Verify: reason %q (%v), want %q", got, err, tt.reason)
			}
		})
	}
}

// TestSkew: exp and nbf within the skew pass, beyond it fail.
func TestSkew(t *testing.T) {
	v := hsVerifier(t, Config{})
	key := []byte(testSecret)
	now := time.Now()
	if _, err := v.Verify(sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"exp": now.Add(-10 * time.Second).Unix(), "nbf": now.Add(10 * time.Second).Unix()}))); err != nil {
		t.Errorf("10s within the 30s skew: %v", err)
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"exp": now.Add(-time.Minute).Unix()}))); reason(err) != ReasonExpired {
		t.Errorf("60s past the 30s skew: %v, want %s", err, ReasonExpired)
	}
}

// TestSeedPayload: the prototype's payload example (with the exp, iss and
// aud every token needs) maps to tenant, tier and a narrowing policy.
func TestSeedPayload(t *testing.T) {
	v := hsVerifier(t, Config{})
	var c jwt.MapClaims
	if err := json.Unmarshal([]byte(seedPayload), &c); err != nil {
		t.Fatal(err)
	}
	c["exp"], c["iss"], c["aud"] = time.Now().Add(time.Hour).Unix(), "sandpit-test", "executor"
	id, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", c))
	if err != nil {
		t.Fatal(err)
	}
	if id.Tenant != "user_123" || id.Tier != "pro" || id.Policy == nil {
		t.Fatalf("identity %+v, want user_123, pro, a policy", id)
	}
	op, err := policy.Parse([]byte(`version: 1
hosts:
  - host: api.stripe.com
    rules:
      - { id: stripe_products, path: /v1/products/**, action: allow }
      - { id: stripe_charges, methods: [POST], path: /v1/charges, action: allow }
  - host: api.openai.com
    default: allow
`))
	if err != nil {
		t.Fatal(err)
	}
	opc, err := policy.Compile(op)
	if err != nil {
		t.Fatal(err)
	}
	chain := policy.Chain(opc, id.Policy)
	tests := []struct {
		method, host, path, rule string
		forward                  bool
	}{
		{"GET", "api.stripe.com", "/v1/products/p1", "stripe_products", true},
		{"POST", "api.stripe.com", "/v1/charges", policy.RuleTokenRevoked, false},
		{"GET", "api.openai.com", "/v1/models", policy.RuleTokenDomains, false},
	}
	for _, tt := range tests {
		d := chain.Decide(policy.Request{Method: tt.method, Host: tt.host, Path: tt.path})
		if d.RuleID != tt.rule || d.Forward() != tt.forward {
			t.Errorf("%s %s%s: %v %q, want forward %v by %q", tt.method, tt.host, tt.path, d.Decision, d.RuleID, tt.forward, tt.rule)
		}
	}
}

// TestClaimNames: tenant and tier come from the claims configured.
func TestClaimNames(t *testing.T) {
	v := hsVerifier(t, Config{TenantClaim: "org", TierClaim: "plan"})
	key := []byte(testSecret)
	id, err := v.Verify(sign(t, jwt.SigningMethodHS256, key, "", claims(jwt.MapClaims{"org": "acme", "plan": "enterprise"})))
	if err != nil || id.Tenant != "acme" || id.Tier != "enterprise" || id.Policy != nil {
		t.Errorf("Verify = %+v, %v; want acme, enterprise, no policy", id, err)
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodHS256, key, "", claims(nil))); reason(err) != ReasonNoTenant {
		t.Errorf("a token with sub but no org: %v, want %s", err, ReasonNoTenant)
	}
}

type keyPair struct {
	method jwt.SigningMethod
	priv   crypto.Signer
}

func newKeys(t *testing.T) []keyPair {
	t.Helper()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return []keyPair{{jwt.SigningMethodRS256, rk}, {jwt.SigningMethodES256, ek}, {jwt.SigningMethodEdDSA, ed}}
}

func pemFile(t *testing.T, k crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
}

// TestPublicKeys: RS256, ES256 and EdDSA tokens verify against PEM keys;
// a token of one algorithm never verifies with another's key.
func TestPublicKeys(t *testing.T) {
	for _, kp := range newKeys(t) {
		t.Run(kp.method.Alg(), func(t *testing.T) {
			v, err := New(Config{PublicKeyFiles: []string{pemFile(t, kp.priv.Public())}, Skew: DefaultSkew}, discard)
			if err != nil {
				t.Fatal(err)
			}
			if id, err := v.Verify(sign(t, kp.method, kp.priv, "", claims(nil))); err != nil || id.Tenant != "tenant-a" {
				t.Errorf("Verify = %+v, %v", id, err)
			}
			other := newKeys(t)
			for _, o := range other {
				if _, err := v.Verify(sign(t, o.method, o.priv, "", claims(nil))); reason(err) != ReasonBadSignature {
					t.Errorf("a %s token of another key: %v, want %s", o.method.Alg(), err, ReasonBadSignature)
				}
			}
			if _, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", claims(nil))); reason(err) != ReasonBadSignature {
				t.Errorf("an HS256 token without a secret configured: %v, want %s", err, ReasonBadSignature)
			}
		})
	}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwksJSON is a JWKS of the public halves of keys, kid "k<i>".
func jwksJSON(t *testing.T, kids []string, keys []keyPair) string {
	t.Helper()
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	for i, kp := range keys {
		m := map[string]string{"kid": kids[i], "use": "sig"}
		switch k := kp.priv.Public().(type) {
		case *rsa.PublicKey:
			m["kty"], m["n"], m["e"] = "RSA", b64(k.N.Bytes()), b64(big.NewInt(int64(k.E)).Bytes())
		case *ecdsa.PublicKey:
			raw, err := k.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			m["kty"], m["crv"], m["x"], m["y"] = "EC", "P-256", b64(raw[1:33]), b64(raw[33:])
		case ed25519.PublicKey:
			m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", b64(k)
		}
		set.Keys = append(set.Keys, m)
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestJWKSRotation: every kind of key verifies from a JWKS; rewriting the
// file is picked up by the next token: the new keys pass, the old fail.
func TestJWKSRotation(t *testing.T) {
	old, next := newKeys(t), newKeys(t)
	kids := []string{"rsa", "ec", "ed"}
	path := writeFile(t, "jwks.json", jwksJSON(t, kids, old))
	v, err := New(Config{JWKSFile: path, Skew: DefaultSkew}, discard)
	if err != nil {
		t.Fatal(err)
	}
	for i, kp := range old {
		if _, err := v.Verify(sign(t, kp.method, kp.priv, kids[i], claims(nil))); err != nil {
			t.Errorf("%s before rotation: %v", kp.method.Alg(), err)
		}
	}
	if err := os.WriteFile(path, []byte(jwksJSON(t, kids, next)), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range old {
		if _, err := v.Verify(sign(t, next[i].method, next[i].priv, kids[i], claims(nil))); err != nil {
			t.Errorf("%s new key after rotation: %v", next[i].method.Alg(), err)
		}
		if _, err := v.Verify(sign(t, old[i].method, old[i].priv, kids[i], claims(nil))); reason(err) != ReasonBadSignature {
			t.Errorf("%s old key after rotation: %v, want %s", old[i].method.Alg(), err, ReasonBadSignature)
		}
	}
	if _, err := v.Verify(sign(t, next[0].method, next[0].priv, "unknown", claims(nil))); reason(err) != ReasonBadSignature {
		t.Errorf("an unknown kid: %v, want %s", err, ReasonBadSignature)
	}
	if err := os.WriteFile(path, []byte(`{"keys": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(sign(t, next[0].method, next[0].priv, kids[0], claims(nil)))
	if reason(err) != ReasonBadSignature || strings.Contains(err.Error(), path) {
		t.Errorf("a broken JWKS: %v, want %s without the file's path", err, ReasonBadSignature)
	}
}

// TestNewRefuses: no key, a short secret, a small RSA key.
func TestNewRefuses(t *testing.T) {
	if _, err := New(Config{}, discard); err == nil {
		t.Error("New without keys succeeded")
	}
	if _, err := New(Config{HS256SecretFile: writeFile(t, "s", "short")}, discard); err == nil {
		t.Error("New with a 5-byte secret succeeded")
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{PublicKeyFiles: []string{pemFile(t, small.Public())}}, discard); err == nil {
		t.Error("New with a 1024-bit RSA key succeeded")
	}
}
