package server

import (
	"strings"
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/config"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
)

func TestCheckPath(t *testing.T) {
	tests := []struct {
		path string
		ok   bool
	}{
		{"main.js", true}, {"lib/a.mjs", true}, {"a b/ü.js", true},
		{"", false}, {"/abs.js", false}, {"../up.js", false}, {"a/../b.js", false}, {"a//b.js", false},
		{"./a.js", false}, {"a/", false}, {".", false}, {"..", false}, {"a\\b.js", false}, {"a\x00.js", false},
		{strings.Repeat("a", 256), false}, {"\xff.js", false},
	}
	for _, tt := range tests {
		if got := checkPath(tt.path) == ""; got != tt.ok {
			t.Errorf("checkPath(%q) ok = %v, want %v (%s)", tt.path, got, tt.ok, checkPath(tt.path))
		}
	}
}

func TestValidateSingleFileDefaults(t *testing.T) {
	s := &Service{cfg: Config{Defaults: limits.Defaults, Maxima: limits.Maxima, DefaultImage: "img"}}
	p, vs := s.validate(&executorv1.ExecuteRequest{Code: "1"})
	if len(vs) != 0 {
		t.Fatal(vs)
	}
	if p.entrypoint != "main.js" || len(p.files) != 1 || p.image != "img" || p.limits != limits.Defaults {
		t.Errorf("program %+v", p)
	}
}

// TestValidateTypeScriptEntrypoints: .ts, .mts and .cts entrypoints are
// accepted as given; .tsx, which node does not strip, is refused, as code
// and as one of the files.
func TestValidateTypeScriptEntrypoints(t *testing.T) {
	s := &Service{cfg: Config{Defaults: limits.Defaults, Maxima: limits.Maxima, DefaultImage: "img"}}
	for _, ep := range []string{"main.ts", "src/main.mts", "main.cts"} {
		p, vs := s.validate(&executorv1.ExecuteRequest{Code: "let x: number = 1", Entrypoint: ep})
		if len(vs) != 0 || p.entrypoint != ep {
			t.Errorf("entrypoint %q: violations %v, entrypoint %q", ep, vs, p.entrypoint)
		}
	}
	for name, req := range map[string]*executorv1.ExecuteRequest{
		"code":     {Code: "<p/>", Entrypoint: "app.tsx"},
		"files":    {Files: []*executorv1.File{{Path: "app.tsx", Content: []byte("<p/>")}, {Path: "lib.ts"}}, Entrypoint: "app.tsx"},
		"one file": {Files: []*executorv1.File{{Path: "ui/app.tsx", Content: []byte("<p/>")}}},
	} {
		_, vs := s.validate(req)
		if len(vs) != 1 || vs[0].Field != "entrypoint" || !strings.Contains(vs[0].Reason, "JSX") {
			t.Errorf("%s: violations %v, want one on entrypoint naming JSX", name, vs)
		}
	}
}

func TestImageAllowlist(t *testing.T) {
	s := &Service{cfg: Config{DefaultImage: "sandpit.local/node:24", ImageAllowlist: []string{"sandpit.local/node-sdk:*", "ghcr.io/acme/exact:1"}}}
	tests := map[string]bool{
		"sandpit.local/node:24":     true,
		"sandpit.local/node-sdk:1":  true,
		"ghcr.io/acme/exact:1":      true,
		"ghcr.io/acme/exact:2":      false,
		"sandpit.local/node:25":     false,
		"docker.io/library/node:24": false,
		"sandpit.local/node-sdk":    false,
	}
	for ref, want := range tests {
		if got := s.imageAllowed(ref); got != want {
			t.Errorf("imageAllowed(%q) = %v, want %v", ref, got, want)
		}
	}
}

// TestImageByProfile: a request names sandpit's images by profile, with
// the default image's Node.js major unless it names one; the default
// allowlist takes node and node-sdk of every major, never node-debug.
func TestImageByProfile(t *testing.T) {
	s := &Service{cfg: Config{DefaultImage: "sandpit.local/node:24", ImageAllowlist: strings.Split(config.DefaultImageAllowlist, ",")}}
	tests := []struct {
		name, ref string
		allowed   bool
	}{
		{"", "sandpit.local/node:24", true},
		{"node", "sandpit.local/node:24", true},
		{"node-sdk", "sandpit.local/node-sdk:24", true},
		{"node-sdk:22", "sandpit.local/node-sdk:22", true},
		{"node:22", "sandpit.local/node:22", true},
		{"node-debug", "sandpit.local/node-debug:24", false},
		{"node-debug:22", "sandpit.local/node-debug:22", false},
		{"acme-tools", "sandpit.local/acme-tools:24", false},
		{"ghcr.io/acme/node:1", "ghcr.io/acme/node:1", false},
		{"sandpit.local/node-sdk:22", "sandpit.local/node-sdk:22", true},
		{"Node", "Node", false},
	}
	for _, tt := range tests {
		ref := s.imageRef(tt.name)
		if ref != tt.ref || s.imageAllowed(ref) != tt.allowed {
			t.Errorf("image %q: %q allowed %v, want %q allowed %v", tt.name, ref, s.imageAllowed(ref), tt.ref, tt.allowed)
		}
	}
	s.cfg.DefaultImage = "sandpit.local/node:22"
	if got := s.imageRef("node-sdk"); got != "sandpit.local/node-sdk:22" {
		t.Errorf("with node:22 the default, node-sdk is %q", got)
	}
}

func TestOutputBudgetSharedAndTruncatesOnce(t *testing.T) {
	calls := 0
	b := &outputBudget{left: 10, exceeded: func() { calls++ }}
	if n := b.take(6); n != 6 {
		t.Fatalf("take 6 = %d", n)
	}
	if n := b.take(6); n != 4 {
		t.Fatalf("take 6 with 4 left = %d", n)
	}
	if n := b.take(1); n != 0 {
		t.Fatalf("take past the budget = %d", n)
	}
	if calls != 1 || !b.wasTruncated() {
		t.Errorf("exceeded called %d times, truncated %v", calls, b.wasTruncated())
	}
}
