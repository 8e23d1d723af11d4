package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sandpit-run/sandpit/services/executor/internal/imageinspect"
	"github.com/sandpit-run/sandpit/services/executor/internal/imageinspect/inspecttest"
)

// TestDefaultImageExitsZero: the default image passes; the JSON says it
// is an OCI layout with node's version and no forbidden class. (The table
// is tested on the built image: one pass over the default image's 46 MiB
// layer is enough under the race detector.)
func TestDefaultImageExitsZero(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"image", "inspect", "--json", inspecttest.DefaultImage(t)}, &out, &errOut); code != exitClean {
		t.Fatalf("exit %d, want %d\n%s%s", code, exitClean, out.String(), errOut.String())
	}
	var got output
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.Format != imageinspect.FormatOCILayout ||
		len(got.Forbidden) != 0 || got.Forbidden == nil || got.Node.Version == "" {
		t.Errorf("--json: %v\n%s\nwant an OCI layout, a node version and no forbidden class", err, out.String())
	}
}

// blanks are the table's column padding and JSON's indentation.
var blanks = regexp.MustCompile(`\s+`)

// TestExitStatuses: 1 while a class --allow does not name is present, 0
// once every present class is allowed, 2 on a usage or read error; the
// table marks forbidden findings and the JSON lists the forbidden classes,
// from either archive format.
func TestExitStatuses(t *testing.T) {
	dir := t.TempDir()
	ociTar, dockerTar := inspecttest.Archives(t, inspecttest.Image(t), dir)
	notImage := inspecttest.WriteTar(t, dir, "other.tar", func(tw *tar.Writer) error {
		return tw.WriteHeader(&tar.Header{Name: "README", Typeflag: tar.TypeReg, Mode: 0o644})
	})
	present := "shell,interpreter,network-tool,setuid,setgid,capability,world-writable"
	tests := []struct {
		name string
		args []string
		want int
		out  string // in stdout, its blanks squeezed
	}{
		{"oci", []string{"image", "inspect", ociTar}, exitForbidden, "/usr/bin/python3"},
		{"docker", []string{"image", "inspect", dockerTar}, exitForbidden, "/usr/bin/curl"},
		{"table marks", []string{"image", "inspect", ociTar}, exitForbidden, "/bin/sh name sh (link to busybox) FORBIDDEN"},
		{"all allowed", []string{"image", "inspect", "--allow", present, ociTar}, exitClean, "no forbidden class"},
		{"one not allowed", []string{"image", "inspect", "--allow", strings.TrimSuffix(present, ",world-writable"), dockerTar}, exitForbidden, "forbidden: world-writable "},
		{"json", []string{"image", "inspect", "--json", "--allow", "shell", ociTar}, exitForbidden, `"forbidden": [ "interpreter",`},
		{"unknown class", []string{"image", "inspect", "--allow", "shell,rootkit", ociTar}, exitError, ""},
		{"no image", []string{"image", "inspect"}, exitError, ""},
		{"two images", []string{"image", "inspect", ociTar, dockerTar}, exitError, ""},
		{"no command", nil, exitError, ""},
		{"other command", []string{"image", "list"}, exitError, ""},
		{"bad flag", []string{"image", "inspect", "--yaml", ociTar}, exitError, ""},
		{"absent file", []string{"image", "inspect", filepath.Join(dir, "absent.tar")}, exitError, ""},
		{"not an image", []string{"image", "inspect", notImage}, exitError, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(tt.args, &out, &errOut)
			if code != tt.want || !strings.Contains(blanks.ReplaceAllString(out.String(), " "), tt.out) {
				t.Errorf("exit %d, want %d; stdout:\n%s\nwant it to hold %q; stderr:\n%s", code, tt.want, out.String(), tt.out, errOut.String())
			}
			if tt.want == exitError && errOut.Len() == 0 {
				t.Error("no message on stderr for an error")
			}
		})
	}
}

// TestDebugImageExitsNonZero: on node-debug the CLI lists the shell and
// exits 1, and 0 once shells are allowed.
func TestDebugImageExitsNonZero(t *testing.T) {
	tar := inspecttest.Archive(t, "SANDPIT_DEBUG_IMAGE_TAR", "sandpit-node-debug.tar")
	var out, errOut bytes.Buffer
	if code := run([]string{"image", "inspect", tar}, &out, &errOut); code != exitForbidden || !strings.Contains(out.String(), "/usr/bin/sh") {
		t.Errorf("node-debug: exit %d, want %d listing /usr/bin/sh:\n%s%s", code, exitForbidden, out.String(), errOut.String())
	}
	out.Reset()
	if code := run([]string{"image", "inspect", "--allow", "shell", tar}, &out, &errOut); code != exitClean {
		t.Errorf("node-debug with shells allowed: exit %d, want %d:\n%s", code, exitClean, out.String())
	}
}
