//go:build integration

package build

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandpit-run/sandpit/deploy/image/internal/pins"
)

// TestNodeMajorsAndDebug builds node for Node.js 22, node-debug, and
// node-sdk and node-debug for 22, each twice: each is reproducible; 22 is
// named node:22, labelled and runs v22; the debug image is the default
// image plus busybox and sh, whose shell runs, and is named node-debug:24.
func TestNodeMajorsAndDebug(t *testing.T) {
	build := func(out, variant, major string) {
		t.Helper()
		if _, err := Run(context.Background(), Options{Out: out, CacheDir: cacheDir(t), Variant: variant, NodeMajor: major, Created: time.Unix(0, 0)}); err != nil {
			t.Fatalf("build %s %s: %v", variant, major, err)
		}
	}
	a, b := filepath.Join(testDir, "n22a.tar"), filepath.Join(testDir, "n22b.tar")
	build(a, "", "22")
	build(b, "", "22")
	if fileSHA(t, a) != fileSHA(t, b) {
		t.Error("two builds of node:22 differ")
	}
	img, desc := loadLayout(t, a)
	n22, _ := pins.NodeByMajor("22")
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if desc.Annotations["io.containerd.image.name"] != "sandpit.local/node:22" || cf.Config.Labels["run.sandpit.node.version"] != n22.Version {
		t.Errorf("node:22 named %q, labelled %q; want sandpit.local/node:22 and %s", desc.Annotations["io.containerd.image.name"], cf.Config.Labels["run.sandpit.node.version"], n22.Version)
	}
	dir := extractRootfs(t, img)
	out, err := exec.Command(filepath.Join(dir, "lib64/ld-linux-x86-64.so.2"), "--library-path", filepath.Join(dir, "usr/lib/x86_64-linux-gnu"),
		filepath.Join(dir, "usr/local/bin/node"), "--version").Output()
	if err != nil || strings.TrimSpace(string(out)) != "v"+n22.Version {
		t.Errorf("node:22's node --version: %q %v", out, err)
	}

	d, d2 := filepath.Join(testDir, "debug.tar"), filepath.Join(testDir, "debug2.tar")
	build(d, "debug", "")
	build(d2, "debug", "")
	if fileSHA(t, d) != fileSHA(t, d2) {
		t.Error("two builds of node-debug differ")
	}
	// The other profiles build for 22 too, twice the same.
	for _, v := range []string{"sdk", "debug"} {
		x, y := filepath.Join(testDir, v+"-22a.tar"), filepath.Join(testDir, v+"-22b.tar")
		build(x, v, "22")
		build(y, v, "22")
		if fileSHA(t, x) != fileSHA(t, y) {
			t.Errorf("two builds of %s for Node 22 differ", v)
		}
		if _, desc := loadLayout(t, x); !strings.HasSuffix(desc.Annotations["io.containerd.image.name"], ":22") {
			t.Errorf("%s for 22 named %q", v, desc.Annotations["io.containerd.image.name"])
		}
	}
	img, desc = loadLayout(t, d)
	if desc.Annotations["io.containerd.image.name"] != "sandpit.local/node-debug:24" {
		t.Errorf("node-debug named %q", desc.Annotations["io.containerd.image.name"])
	}
	dir = extractRootfs(t, img)
	if link, err := os.Readlink(filepath.Join(dir, "usr/bin/sh")); err != nil || link != "busybox" {
		t.Errorf("node-debug's /usr/bin/sh: %q %v, want a link to busybox", link, err)
	}
	out, err = exec.Command(filepath.Join(dir, DebugShellPath), "sh", "-c", "echo shell").Output()
	if err != nil || strings.TrimSpace(string(out)) != "shell" {
		t.Errorf("node-debug's shell: %q %v", out, err)
	}
	base, _ := built(t)
	baseImg, _ := loadLayout(t, base)
	bl, _ := baseImg.Layers()
	dl, _ := img.Layers()
	if len(dl) != len(bl)+1 {
		t.Fatalf("node-debug has %d layers, want the base's %d and one", len(dl), len(bl))
	}
	for i := range bl {
		x, _ := bl[i].Digest()
		y, _ := dl[i].Digest()
		if x != y {
			t.Errorf("layer %d differs from the base image's", i)
		}
	}
}

// TestOperatorProfile builds the example operator profile twice: the same
// digest; the node image's layers, then the npm packages at /node_modules,
// then the profile's file at its place, 0644; named acme-tools:24.
func TestOperatorProfile(t *testing.T) {
	a, b := filepath.Join(testDir, "acme-a.tar"), filepath.Join(testDir, "acme-b.tar")
	for _, out := range []string{a, b} {
		if _, err := Run(context.Background(), Options{Out: out, CacheDir: cacheDir(t), ProfileFile: "../../examples/profile/profile.yaml", Created: time.Unix(0, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	if fileSHA(t, a) != fileSHA(t, b) {
		t.Error("two builds of the example profile differ")
	}
	img, desc := loadLayout(t, a)
	if desc.Annotations["io.containerd.image.name"] != "sandpit.local/acme-tools:24" {
		t.Errorf("named %q", desc.Annotations["io.containerd.image.name"])
	}
	layers, _ := img.Layers()
	if len(layers) != 3 {
		t.Errorf("%d layers, want the base, the npm packages and the files", len(layers))
	}
	dir := extractRootfs(t, img)
	st, err := os.Stat(filepath.Join(dir, "etc/acme/ca.pem"))
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("the profile's file: %v %v, want mode 0644", st, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules/ms/index.js")); err != nil {
		t.Errorf("the profile's npm package: %v", err)
	}
	cf, _ := img.ConfigFile()
	if cf.Config.Labels["run.sandpit.npm.ms"] != "2.1.3" {
		t.Errorf("labels %v", cf.Config.Labels)
	}
}
