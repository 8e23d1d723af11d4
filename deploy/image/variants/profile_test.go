package variants

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadProfile: the example profile loads; a profile that takes one of
// sandpit's names, puts a file where the image's own or the executor's
// live, pins a range, or lacks its lock file is refused, naming the field.
func TestLoadProfile(t *testing.T) {
	v, err := LoadProfile("../examples/profile/profile.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if v.Profile != "acme-tools" || v.Packages["ms"] != "2.1.3" || len(v.PackageLock) == 0 || len(v.Files) != 1 || v.Files[0].Dest != "/etc/acme/ca.pem" {
		t.Errorf("example profile: %+v", v)
	}
	write := func(dir, name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct{ name, profile, pkg, want string }{
		{"sandpit's name", "version: 1\nname: node-sdk\nnpm: .\n", `{"dependencies":{"ms":"2.1.3"}}`, "name: node-sdk is one of sandpit's own"},
		{"bad name", "version: 1\nname: Acme\nnpm: .\n", `{}`, "name:"},
		{"version", "version: 2\nname: a\nnpm: .\n", `{}`, "version: want 1"},
		{"unknown key", "version: 1\nname: a\nnpm: .\nimage: x\n", `{}`, "field image not found"},
		{"nothing added", "version: 1\nname: a\n", `{}`, "npm packages, files or both"},
		{"a range", "version: 1\nname: a\nnpm: .\n", `{"dependencies":{"ms":"^2.1.3"}}`, "pin an exact version"},
		{"under /usr", "version: 1\nname: a\nfiles: [{ src: f, dest: /usr/local/bin/sh }]\n", `{}`, "under /usr"},
		{"the code dir", "version: 1\nname: a\nfiles: [{ src: f, dest: /sandbox/x }]\n", `{}`, "under /sandbox"},
		{"relative dest", "version: 1\nname: a\nfiles: [{ src: f, dest: etc/x }]\n", `{}`, "absolute, clean path"},
		{"missing src", "version: 1\nname: a\nfiles: [{ src: nope, dest: /etc/x }]\n", `{}`, "files[0].src"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(dir, "profile.yaml", tt.profile)
			write(dir, "package.json", tt.pkg)
			write(dir, "package-lock.json", `{"lockfileVersion":3}`)
			write(dir, "f", "x")
			_, err := LoadProfile(filepath.Join(dir, "profile.yaml"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
	dir := t.TempDir()
	write(dir, "profile.yaml", "version: 1\nname: a\nnpm: .\n")
	write(dir, "package.json", `{"dependencies":{"ms":"2.1.3"}}`)
	if _, err := LoadProfile(filepath.Join(dir, "profile.yaml")); err == nil || !strings.Contains(err.Error(), "package-lock-only") {
		t.Errorf("without a lock file: %v", err)
	}
}
