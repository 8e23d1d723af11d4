package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"sync"
)

// jwksFile is a JWKS file, parsed again whenever its bytes change; a file
// that stops parsing fails every token until it is fixed, so a broken
// rotation is seen at once rather than served by stale keys.
type jwksFile struct {
	path string

	mu   sync.Mutex
	raw  []byte
	keys []jwk
	err  error
}

type jwk struct {
	kid string
	key crypto.PublicKey
}

// load returns the file's keys. The file is small and read on every call:
// a rewrite, in place or by rename, is seen by the next token.
func (f *jwksFile) load() ([]jwk, error) {
	raw, err := os.ReadFile(f.path)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.raw == nil || !bytes.Equal(raw, f.raw) {
		f.raw = raw
		f.keys, f.err = parseJWKS(raw)
		if f.err != nil {
			f.err = fmt.Errorf("jwks %s: %w", f.path, f.err)
		}
	}
	return f.keys, f.err
}

// parseJWKS reads RFC 7517 keys of kty RSA, EC (P-256) and OKP (Ed25519).
func parseJWKS(raw []byte) ([]jwk, error) {
	var set struct {
		Keys []struct {
			Kty, Kid, Crv, Use string
			N, E, X, Y         string
		} `json:"keys"`
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, err
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("no keys")
	}
	var keys []jwk
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		key, err := parseJWK(k.Kty, k.Crv, k.N, k.E, k.X, k.Y)
		if err != nil {
			return nil, fmt.Errorf("keys[%d] (kid %q): %w", i, k.Kid, err)
		}
		keys = append(keys, jwk{kid: k.Kid, key: key})
	}
	return keys, nil
}

func parseJWK(kty, crv, n, e, x, y string) (crypto.PublicKey, error) {
	b64 := base64.RawURLEncoding.DecodeString
	switch kty {
	case "RSA":
		nb, err1 := b64(n)
		eb, err2 := b64(e)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		ei := new(big.Int).SetBytes(eb)
		if !ei.IsInt64() || ei.Int64() < 3 || ei.Int64() > 1<<31-1 {
			return nil, errors.New("bad RSA exponent")
		}
		k := &rsa.PublicKey{N: new(big.Int).SetBytes(nb), E: int(ei.Int64())}
		return k, checkKey(k)
	case "EC":
		if crv != "P-256" {
			return nil, fmt.Errorf("curve %q: only P-256 (ES256)", crv)
		}
		xb, err1 := b64(x)
		yb, err2 := b64(y)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		if len(xb) != 32 || len(yb) != 32 {
			return nil, errors.New("P-256 coordinates must be 32 bytes")
		}
		// The uncompressed point form, which ecdsa.ParseUncompressedPublicKey checks is on the curve.
		return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, xb...), yb...))
	case "OKP":
		if crv != "Ed25519" {
			return nil, fmt.Errorf("curve %q: only Ed25519 (EdDSA)", crv)
		}
		xb, err := b64(x)
		if err != nil {
			return nil, err
		}
		if len(xb) != ed25519.PublicKeySize {
			return nil, errors.New("an Ed25519 key is 32 bytes")
		}
		return ed25519.PublicKey(xb), nil
	default:
		return nil, fmt.Errorf("kty %q: use RSA, EC or OKP", kty)
	}
}

// checkKey refuses keys of kinds or sizes the accepted algorithms do not
// use.
func checkKey(k crypto.PublicKey) error {
	switch k := k.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits, want at least 2048", k.N.BitLen())
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return errors.New("ECDSA key not on P-256 (ES256)")
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("%T keys are not supported: use RSA, ECDSA P-256 or Ed25519", k)
	}
	return nil
}

// fitsAlg says whether k verifies tokens of alg.
func fitsAlg(k crypto.PublicKey, alg string) bool {
	switch k.(type) {
	case *rsa.PublicKey:
		return alg == "RS256"
	case *ecdsa.PublicKey:
		return alg == "ES256"
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}
