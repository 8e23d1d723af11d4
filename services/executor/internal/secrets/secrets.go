// Package secrets is the executor's store of the credentials the egress
// proxy places into a sandbox's allowed requests, so that the code never
// holds them: files in a directory (one per secret, read again when they
// change), the executor's own environment and sources of tenants' secrets
// (AddSource: the PostgreSQL tenants store). A secret belongs to a tenant
// (DIR/<tenant>/<name>, a source's) or, on an executor without tenants, to
// the executor (DIR/<name>, SANDPIT_SECRET_<NAME>).
//
// A Value never shows its bytes: fmt, slog and encoding/json print its name
// only, so a secret that reaches a log line, an error or an event by
// mistake reads "[secret stripe]". Only Reveal gives the bytes, for the one
// place that puts them on the wire to the proxy.
package secrets

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sandpit-run/sandpit/services/executor/internal/tenants"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Bounds on what the store holds.
const (
	// MaxValueBytes bounds one secret: API keys and tokens are far
	// smaller; a larger file is refused, not cut.
	MaxValueBytes = tenants.MaxSecretBytes
	// MaxSecrets bounds the secrets of the directory together.
	MaxSecrets = 10000
	// EnvPrefix names the executor's environment variables that hold
	// executor-wide secrets: SANDPIT_SECRET_STRIPE holds "stripe".
	EnvPrefix = "SANDPIT_SECRET_"
)

// Errors of Lookup.
var (
	ErrNotFound = errors.New("no such secret")
	ErrBadName  = errors.New("not a secret name")
)

// Value is a secret's bytes, which it never prints.
type Value struct {
	name string
	b    []byte
}

// Name is the secret's name.
func (v Value) Name() string { return v.name }

// Reveal returns the secret's bytes. The caller must not log, return or
// store them anywhere a caller of the executor can see.
func (v Value) Reveal() []byte { return v.b }

// String is the secret's name, never its bytes.
func (v Value) String() string { return "[secret " + v.name + "]" }

// GoString is String, for %#v.
func (v Value) GoString() string { return v.String() }

// LogValue is String, for slog.
func (v Value) LogValue() slog.Value { return slog.StringValue(v.String()) }

// MarshalJSON is String, as a JSON string.
func (v Value) MarshalJSON() ([]byte, error) { return []byte(`"` + v.String() + `"`), nil }

// MarshalText is String.
func (v Value) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// Store holds the secrets of a directory, re-read by Check, of the
// environment, read once, and of its sources.
type Store struct {
	dir string
	env map[string]Value
	log *slog.Logger

	mu      sync.RWMutex
	sources []Source
	files   map[string]Value // "tenant/name" or "name"
	mtimes  map[string]time.Time
	problem string
}

// Open reads the secrets of dir (empty for none) and of environ (the
// executor's environment, os.Environ()). Variables with EnvPrefix are
// executor-wide secrets; the caller should unset them (Unsetenv) so that
// no child process inherits them. With neither the store is empty until
// a source is added.
func Open(dir string, environ []string, log *slog.Logger) (*Store, error) {
	s := &Store{dir: dir, env: map[string]Value{}, log: log}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, EnvPrefix) {
			continue
		}
		n := strings.ToLower(strings.TrimPrefix(k, EnvPrefix))
		if err := tenants.CheckSecret(n, []byte(v)); err != nil {
			return nil, fmt.Errorf("environment variable %s: %w", k, err)
		}
		s.env[n] = Value{name: n, b: []byte(v)}
	}
	if dir != "" {
		files, mtimes, err := readDir(dir)
		if err != nil {
			return nil, err
		}
		s.files, s.mtimes = files, mtimes
	}
	return s, nil
}

// Source gives tenant's secret name, when it holds it: the PostgreSQL
// tenants store's Secret. The bytes are not to be changed.
type Source func(tenant, name string) ([]byte, bool)

// AddSource adds a source of tenants' secrets, consulted after the
// directory (a file wins over a source) and after the sources added
// before it.
func (s *Store) AddSource(src Source) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sources = append(s.sources, src)
}

// Lookup returns tenant's secret name: DIR/<tenant>/<name>, else the first
// source's that has it. With an empty tenant (an executor without tenants)
// it is the executor's: DIR/<name>, else SANDPIT_SECRET_<NAME>. A tenant
// never sees another tenant's secrets, nor the executor's.
func (s *Store) Lookup(tenant, secret string) (Value, error) {
	if !policy.IsSecretName(secret) || tenant != "" && !tenants.IsName(tenant) {
		return Value{}, fmt.Errorf("%w: %q", ErrBadName, secret)
	}
	key := secret
	if tenant != "" {
		key = tenant + "/" + secret
	}
	s.mu.RLock()
	v, ok := s.files[key]
	sources := s.sources
	s.mu.RUnlock()
	if ok {
		return v, nil
	}
	if tenant == "" {
		if v, ok := s.env[secret]; ok {
			return v, nil
		}
		return Value{}, fmt.Errorf("%w %q", ErrNotFound, secret)
	}
	for _, src := range sources {
		if b, ok := src(tenant, secret); ok {
			return Value{name: secret, b: b}, nil
		}
	}
	return Value{}, fmt.Errorf("%w %q", ErrNotFound, secret)
}

// Len is how many secrets the directory and the environment hold (a
// source's are its own to count).
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.files) + len(s.env)
}

// Problem says why the directory's last change is not in force, or is
// empty when it is.
func (s *Store) Problem() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.problem
}

// Check reads the directory again when a file in it changed, appeared or
// went away. A directory that does not read keeps the secrets in force and
// says why in Problem; a secret whose file is removed is gone.
func (s *Store) Check() {
	if s.dir == "" {
		return
	}
	s.mu.RLock()
	old := s.mtimes
	s.mu.RUnlock()
	_, now, err := scan(s.dir)
	if err == nil && sameTimes(old, now) {
		return
	}
	files, mtimes, err := readDir(s.dir)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.problem != err.Error() {
			s.log.Error("secrets directory changed but does not read; keeping the secrets in force", "dir", s.dir, "error", err)
		}
		s.problem = err.Error()
		return
	}
	s.files, s.mtimes, s.problem = files, mtimes, ""
	s.log.Info("secrets reloaded", "dir", s.dir, "secrets", len(files))
}

func sameTimes(a, b map[string]time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for k, t := range a {
		if u, ok := b[k]; !ok || !u.Equal(t) {
			return false
		}
	}
	return true
}

// scan lists the secret files of dir (DIR/<name> and DIR/<tenant>/<name>)
// with their mtimes; names that are not secret names (dot files, editors'
// backups) are skipped.
func scan(dir string) ([]string, map[string]time.Time, error) {
	top, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("secrets directory: %w", err)
	}
	var keys []string
	mtimes := map[string]time.Time{}
	add := func(key, path string) error {
		st, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("secret %s: %w", key, err)
		}
		if len(keys) == MaxSecrets {
			return fmt.Errorf("secrets directory: more than %d secrets", MaxSecrets)
		}
		keys = append(keys, key)
		mtimes[key] = st.ModTime()
		return nil
	}
	for _, e := range top {
		if e.IsDir() && !tenants.IsName(e.Name()) || !e.IsDir() && !policy.IsSecretName(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if !e.IsDir() {
			if err := add(e.Name(), p); err != nil {
				return nil, nil, err
			}
			continue
		}
		sub, err := os.ReadDir(p)
		if err != nil {
			return nil, nil, fmt.Errorf("secrets of tenant %s: %w", e.Name(), err)
		}
		for _, f := range sub {
			if !f.IsDir() && policy.IsSecretName(f.Name()) {
				if err := add(e.Name()+"/"+f.Name(), filepath.Join(p, f.Name())); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	return keys, mtimes, nil
}

// readDir reads every secret of dir. A file others may read (mode & 0o044),
// an empty one and one over MaxValueBytes are errors: the directory is
// refused whole rather than served in part. A trailing newline (echo's) is
// not part of the secret.
func readDir(dir string) (map[string]Value, map[string]time.Time, error) {
	keys, mtimes, err := scan(dir)
	if err != nil {
		return nil, nil, err
	}
	files := map[string]Value{}
	for _, key := range keys {
		p := filepath.Join(dir, filepath.FromSlash(key))
		st, err := os.Stat(p)
		if err != nil {
			return nil, nil, fmt.Errorf("secret %s: %w", key, err)
		}
		if st.Mode().Perm()&0o044 != 0 {
			return nil, nil, fmt.Errorf("secret %s: mode %v lets others read it; chmod 600", key, st.Mode().Perm())
		}
		if st.Size() > MaxValueBytes {
			return nil, nil, fmt.Errorf("secret %s: %d bytes, at most %d", key, st.Size(), MaxValueBytes)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, nil, fmt.Errorf("secret %s: %w", key, err)
		}
		b = []byte(strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"))
		n := key[strings.LastIndexByte(key, '/')+1:]
		if err := tenants.CheckSecret(n, b); err != nil {
			return nil, nil, fmt.Errorf("secret %s: %w", key, err)
		}
		files[key] = Value{name: n, b: b}
	}
	return files, mtimes, nil
}

// placeholderChars are what a placeholder's random part is drawn from:
// letters and digits, the shape API keys have.
const placeholderChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// Placeholder ids: every placeholder ends in Marker and IDRandom random
// letters and digits, its IDLen-byte id, which the egress proxy finds in a
// request without knowing any execution's placeholders. 29 characters of
// 62 hold 172 bits, so no two executions share one.
const (
	Marker   = "SPX"
	IDRandom = 29
	IDLen    = len(Marker) + IDRandom
)

// Placeholder returns prefix, Marker and IDRandom random letters and
// digits: a value of the shape an SDK checks (sk_test_..., ghp_...) that
// stands for a secret in a sandbox and is worth nothing outside it.
func Placeholder(prefix string) string {
	b := make([]byte, IDRandom)
	max := big.NewInt(int64(len(placeholderChars)))
	for i := range b {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic("secrets: crypto/rand failed: " + err.Error())
		}
		b[i] = placeholderChars[n.Int64()]
	}
	return prefix + Marker + string(b)
}

// ID is the id of placeholder p: its last IDLen bytes.
func ID(p string) string { return p[max(0, len(p)-IDLen):] }
