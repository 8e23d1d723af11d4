package config

import (
	"flag"
	"strings"

	"github.com/sandpit-run/sandpit/services/executor/internal/identity"
)

// jwtFlags are the flags of caller authentication: any key flag turns it
// on, and then every ExecutorService call needs a bearer token.
func jwtFlags(fs *flag.FlagSet, c *identity.Config) {
	fs.StringVar(&c.HS256SecretFile, "jwt-hs256-secret-file", "", "file holding the HS256 secret (at least 32 bytes) of callers' bearer tokens; setting any --jwt-*-file flag makes Execute require a token")
	fs.Func("jwt-public-key-file", "PEM public key (RSA 2048+, ECDSA P-256 or Ed25519) of RS256, ES256 or EdDSA caller tokens; repeatable or comma-separated", func(s string) error {
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				c.PublicKeyFiles = append(c.PublicKeyFiles, f)
			}
		}
		return nil
	})
	fs.StringVar(&c.JWKSFile, "jwt-jwks-file", "", "JWKS file of RS256, ES256 or EdDSA caller token keys, read again when it changes (kid selects the key)")
	fs.StringVar(&c.Issuer, "jwt-issuer", "", "iss every caller token must have; empty accepts any")
	fs.StringVar(&c.Audience, "jwt-audience", "", "aud every caller token must include; empty accepts any")
	fs.DurationVar(&c.Skew, "jwt-clock-skew", identity.DefaultSkew, "clock skew allowed on caller tokens' exp and nbf")
	fs.StringVar(&c.TenantClaim, "jwt-tenant-claim", identity.DefaultTenantClaim, "claim naming the caller's tenant; a token without it is refused")
	fs.StringVar(&c.TierClaim, "jwt-tier-claim", identity.DefaultTierClaim, "claim naming the caller's tier")
}
