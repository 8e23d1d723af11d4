package sandbox

import (
	"slices"
	"testing"
)

func TestTypeScriptFlags(t *testing.T) {
	flag := []string{StripTypesFlag}
	tests := []struct {
		version, entrypoint string
		want                []string
	}{
		// Type stripping behind the flag: 22.6 to 22.17, 23.0 to 23.5.
		{"22.6.0", "main.ts", flag},
		{"22.17.1", "main.ts", flag},
		{"v22.12.0", "src/main.mts", flag},
		{"23.0.0", "main.cts", flag},
		{"23.5.0", "main.ts", flag},
		// On by default from 22.18 and 23.6 (checked on 22.23.5 and 24.21.0).
		{"22.18.0", "main.ts", nil},
		{"22.23.5", "main.ts", nil},
		{"23.6.0", "main.ts", nil},
		{"24.21.0", "main.mts", nil},
		{"25.2.0", "main.cts", nil},
		// Before type stripping, or unknown: node's default, node's error.
		{"22.5.1", "main.ts", nil},
		{"20.20.2", "main.ts", nil},
		{"", "main.ts", nil},
		{"latest", "main.ts", nil},
		{"22", "main.ts", nil},
		// Not TypeScript: never the flag.
		{"22.12.0", "main.js", nil},
		{"22.12.0", "main.mjs", nil},
		{"22.12.0", "main.tsx", nil},
		{"22.12.0", "ts", nil},
		{"22.12.0", "main.d.ts.js", nil},
	}
	for _, tt := range tests {
		if got := typeScriptFlags(tt.version, tt.entrypoint); !slices.Equal(got, tt.want) {
			t.Errorf("typeScriptFlags(%q, %q) = %q, want %q", tt.version, tt.entrypoint, got, tt.want)
		}
	}
}

func TestIsTypeScript(t *testing.T) {
	for name, want := range map[string]bool{
		"main.ts": true, "a/b.mts": true, "x.cts": true,
		"main.tsx": false, "main.js": false, "main.ts.js": false, "ts": false, "main.TS": false,
	} {
		if got := IsTypeScript(name); got != want {
			t.Errorf("IsTypeScript(%q) = %v, want %v", name, got, want)
		}
	}
}
