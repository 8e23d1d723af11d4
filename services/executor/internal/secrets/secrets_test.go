package secrets

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const stripeKey = "sk_live_REALVALUEdoNotLeak0123456789"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func writeSecret(t *testing.T, path, value string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	// Removed first: WriteFile keeps an existing file's mode.
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(value), mode); err != nil {
		t.Fatal(err)
	}
	// Each write moves the mtime on, even within the file system's
	// timestamp granularity.
	later := time.Now().Add(time.Duration(len(value)) * time.Millisecond)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
}

// TestLookupBelongsToItsTenant: a tenant reads its own secrets only; the
// executor's (files and environment) serve an executor without tenants.
func TestLookupBelongsToItsTenant(t *testing.T) {
	dir := t.TempDir()
	writeSecret(t, filepath.Join(dir, "acme", "stripe"), stripeKey+"\n", 0o600)
	writeSecret(t, filepath.Join(dir, "globex", "github"), "ghp_globexToken", 0o600)
	writeSecret(t, filepath.Join(dir, "shared"), "executor-wide", 0o600)
	writeSecret(t, filepath.Join(dir, ".stripe.swp"), "editor junk", 0o600)
	s, err := Open(dir, []string{"PATH=/bin", EnvPrefix + "OPENAI=sk-env-value"}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tenant, name, want string
		err                error
	}{
		{"acme", "stripe", stripeKey, nil}, // the trailing newline is not part of it
		{"acme", "github", "", ErrNotFound},
		{"globex", "github", "ghp_globexToken", nil},
		{"globex", "stripe", "", ErrNotFound},
		{"acme", "shared", "", ErrNotFound}, // the executor's, not acme's
		{"acme", "openai", "", ErrNotFound},
		{"", "shared", "executor-wide", nil},
		{"", "openai", "sk-env-value", nil},
		{"", "stripe", "", ErrNotFound},
		{"", "../acme/stripe", "", ErrBadName},
		{"acme/..", "shared", "", ErrBadName},
		{"", ".stripe.swp", "", ErrBadName},
	}
	for _, tt := range tests {
		v, err := s.Lookup(tt.tenant, tt.name)
		if !errors.Is(err, tt.err) || string(v.Reveal()) != tt.want {
			t.Errorf("Lookup(%q, %q) = %q, %v; want %q, %v", tt.tenant, tt.name, v.Reveal(), err, tt.want, tt.err)
		}
	}
}

// TestSourcesAfterTheDirectory: a source serves a tenant's secrets the
// directory lacks (a file wins when both have one, an earlier source over a
// later one); a tenant never gets another tenant's secret, nor does the
// executor (no tenant) get a source's; what a source gives never prints.
func TestSourcesAfterTheDirectory(t *testing.T) {
	dir := t.TempDir()
	writeSecret(t, filepath.Join(dir, "acme", "stripe"), "from-the-file", 0o600)
	s, err := Open(dir, nil, quiet())
	if err != nil {
		t.Fatal(err)
	}
	table := func(rows map[[2]string]string) Source {
		return func(tenant, name string) ([]byte, bool) {
			v, ok := rows[[2]string{tenant, name}]
			return []byte(v), ok
		}
	}
	s.AddSource(table(map[[2]string]string{
		{"acme", "stripe"}: "from-the-database", {"acme", "github"}: "ghp_acmeDB", {"globex", "openai"}: stripeKey,
	}))
	s.AddSource(table(map[[2]string]string{{"acme", "github"}: "second-source", {"acme", "slack"}: "xoxb-second"}))
	tests := []struct {
		tenant, name, want string
		err                error
	}{
		{"acme", "stripe", "from-the-file", nil},
		{"acme", "github", "ghp_acmeDB", nil},
		{"acme", "slack", "xoxb-second", nil},
		{"globex", "openai", stripeKey, nil},
		{"acme", "openai", "", ErrNotFound},   // globex's
		{"globex", "github", "", ErrNotFound}, // acme's
		{"", "openai", "", ErrNotFound},       // no tenant: the executor's only
		{"acme", "../globex/openai", "", ErrBadName},
	}
	for _, tt := range tests {
		v, err := s.Lookup(tt.tenant, tt.name)
		if !errors.Is(err, tt.err) || string(v.Reveal()) != tt.want {
			t.Errorf("Lookup(%q, %q) = %q, %v; want %q, %v", tt.tenant, tt.name, v.Reveal(), err, tt.want, tt.err)
		}
	}
	v, _ := s.Lookup("globex", "openai")
	if out := fmt.Sprintf("%v %+v %s", v, v, v); strings.Contains(out, "REALVALUE") || v.Name() != "openai" {
		t.Errorf("a source's value prints as %q (name %q)", out, v.Name())
	}
	// With no directory and no environment, a store serves its sources.
	bare, err := Open("", nil, quiet())
	if err != nil {
		t.Fatal(err)
	}
	bare.AddSource(table(map[[2]string]string{{"acme", "github"}: "ghp_acmeDB"}))
	if v, err := bare.Lookup("acme", "github"); err != nil || string(v.Reveal()) != "ghp_acmeDB" {
		t.Errorf("a store of sources only: %q, %v", v.Reveal(), err)
	}
}

// TestValueNeverPrints: fmt in every verb, slog in text and JSON, and
// encoding/json show the secret's name, never its bytes.
func TestValueNeverPrints(t *testing.T) {
	v := Value{name: "stripe", b: []byte(stripeKey)}
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X"} {
		fmt.Fprintf(&out, verb+"\n", v)
		fmt.Fprintf(&out, verb+"\n", struct{ Key Value }{v})
		fmt.Fprintf(&out, verb+"\n", &v)
	}
	fmt.Fprintln(&out, v, []Value{v}, map[string]Value{"k": v})
	slog.New(slog.NewTextHandler(&out, nil)).Info("x", "secret", v, "list", []Value{v})
	slog.New(slog.NewJSONHandler(&out, nil)).Info("x", "secret", v, "nested", struct{ V Value }{v})
	b, err := json.Marshal(map[string]any{"v": v, "p": &v})
	if err != nil {
		t.Fatal(err)
	}
	out.Write(b)
	hexed := fmt.Sprintf("%x", stripeKey)
	for _, leak := range []string{stripeKey, hexed, strings.ToUpper(hexed), "REALVALUE"} {
		if strings.Contains(out.String(), leak) {
			t.Fatalf("the secret's bytes were printed:\n%s", out.String())
		}
	}
	if !strings.Contains(out.String(), "[secret stripe]") {
		t.Errorf("no [secret stripe] in:\n%s", out.String())
	}
}

// TestCheckFollowsTheDirectory: a changed, an added and a removed file are
// seen on the next Check; a directory that does not read (a file others may
// read, an empty or oversized one) keeps the secrets in force and says why,
// until it is fixed.
func TestCheckFollowsTheDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acme", "stripe")
	writeSecret(t, path, "one", 0o600)
	s, err := Open(dir, nil, quiet())
	if err != nil {
		t.Fatal(err)
	}
	value := func(tenant, n string) string {
		v, _ := s.Lookup(tenant, n)
		return string(v.Reveal())
	}
	writeSecret(t, path, "two-two", 0o600)
	writeSecret(t, filepath.Join(dir, "acme", "github"), "ghp", 0o600)
	s.Check()
	if value("acme", "stripe") != "two-two" || value("acme", "github") != "ghp" {
		t.Fatalf("after a change: stripe %q, github %q", value("acme", "stripe"), value("acme", "github"))
	}
	for _, broken := range []struct {
		name  string
		write func()
		want  string
	}{
		{"world-readable", func() { writeSecret(t, filepath.Join(dir, "acme", "leaky"), "x", 0o644) }, "lets others read it"},
		{"empty", func() { writeSecret(t, filepath.Join(dir, "acme", "leaky"), "", 0o600) }, "empty"},
		{"oversized", func() {
			writeSecret(t, filepath.Join(dir, "acme", "leaky"), strings.Repeat("k", MaxValueBytes+1), 0o600)
		}, "at most"},
	} {
		broken.write()
		s.Check()
		if !strings.Contains(s.Problem(), broken.want) || value("acme", "stripe") != "two-two" {
			t.Errorf("%s file: problem %q, stripe %q; want the secrets in force and a problem naming %q", broken.name, s.Problem(), value("acme", "stripe"), broken.want)
		}
	}
	if err := os.Remove(filepath.Join(dir, "acme", "leaky")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "acme", "github")); err != nil {
		t.Fatal(err)
	}
	s.Check()
	if s.Problem() != "" || value("acme", "github") != "" || value("acme", "stripe") != "two-two" {
		t.Errorf("after the fix and a removal: problem %q, github %q, stripe %q", s.Problem(), value("acme", "github"), value("acme", "stripe"))
	}
	if _, err := Open(filepath.Join(dir, "missing"), nil, quiet()); err == nil {
		t.Error("a missing directory opened")
	}
}

// TestEnvironmentSecrets: SANDPIT_SECRET_<NAME> is the executor's secret
// <name>; a bad name or an empty value is refused at start.
func TestEnvironmentSecrets(t *testing.T) {
	for _, env := range [][]string{{EnvPrefix + "BAD/NAME=x"}, {EnvPrefix + "EMPTY="}, {EnvPrefix + "BIG=" + strings.Repeat("k", MaxValueBytes+1)}, {EnvPrefix + "CRLF=a\r\nX-Injected: 1"}} {
		if _, err := Open("", env, quiet()); err == nil {
			t.Errorf("Open with %.40q: no error", env)
		}
	}
	s, err := Open("", []string{EnvPrefix + "STRIPE_KEY=" + stripeKey, "SANDPIT_SECRETS_DIR=/x"}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.Lookup("", "stripe_key"); err != nil || string(v.Reveal()) != stripeKey {
		t.Errorf("stripe_key = %q, %v", v.Reveal(), err)
	}
	if _, err := s.Lookup("", "s_dir"); err == nil {
		t.Error("SANDPIT_SECRETS_DIR was read as a secret")
	}
}

// TestPlaceholder: the prefix an SDK checks, the marker, then 29 letters
// and digits, different every time; its id is the marker and what follows.
func TestPlaceholder(t *testing.T) {
	shape := regexp.MustCompile(`^sk_test_SPX[A-Za-z0-9]{29}$`)
	seen := map[string]bool{}
	for range 1000 {
		p := Placeholder("sk_test_")
		if !shape.MatchString(p) || seen[p] {
			t.Fatalf("placeholder %q: wrong shape or repeated", p)
		}
		seen[p] = true
		if id := ID(p); len(id) != IDLen || p != "sk_test_"+id {
			t.Fatalf("ID(%q) = %q", p, id)
		}
	}
}
