// Package inspecttest gives the image inspector's tests their images: the
// real default image's archive and one built in memory with something of
// every class in it.
package inspecttest

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// DefaultImage returns the default image's archive: $SANDPIT_IMAGE_TAR, or
// build/sandpit-node.tar at the repository's root. When it is missing the
// test is skipped, or fails under CI (CI set), where make test builds it.
func DefaultImage(t *testing.T) string {
	t.Helper()
	return Archive(t, "SANDPIT_IMAGE_TAR", "sandpit-node.tar")
}

// Archive returns the image archive $env names, or build/name at the
// repository's root; missing, the test is skipped, or fails under CI (make
// test builds every one: make images).
func Archive(t *testing.T, env, name string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		root, err := repoRoot()
		if err != nil {
			t.Fatal(err)
		}
		p = filepath.Join(root, "build", name)
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI: image %s (make images builds it): %v", name, err)
		}
		t.Skipf("no image %s (make images builds it, or set %s): %v", name, env, err)
	}
	return p
}

// repoRoot is the repository's root, found from where this file was
// compiled: services/executor/internal/imageinspect/inspecttest.
func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("no caller information to find the repository root by")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "..", ".."), nil
}

// NodeVersion is the version the built image's node binary, label and
// NODE_VERSION say.
const NodeVersion = "22.3.0"

// capability is a security.capability value (VFS_CAP_REVISION_2,
// cap_net_raw permitted and effective), as setcap writes it.
const capability = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// entry is one tar entry of a built layer.
type entry struct {
	name, link, body string
	typ              byte
	mode             int64
	pax              map[string]string
}

// Image builds an image of two layers. The first holds python3, curl,
// busybox with /bin/sh linking to it (and /usr/bin/bash, by a relative
// path climbing above the root), a setuid su, a setgid wall, a file with
// a capability, a world-writable /var/drop, /tmp (1777), perl,
// /opt/tools/wget, /srv/app/ruby, a non-executable bash completion named
// curl, a /usr/lib/python3 directory and a node whose bytes carry a
// release URL; the second deletes perl with a whiteout and /opt/tools' old
// content with an opaque whiteout, adds /opt/tools/README, and replaces
// the directory /srv/app by a file.
func Image(t *testing.T) v1.Image {
	t.Helper()
	exe := func(name string) entry { return entry{name: name, typ: tar.TypeReg, mode: 0o755, body: "#!\n"} }
	dir := func(name string, mode int64) entry { return entry{name: name, typ: tar.TypeDir, mode: mode} }
	lower := []entry{
		dir("bin/", 0o755), dir("usr/", 0o755), dir("usr/bin/", 0o755), dir("usr/sbin/", 0o755),
		dir("usr/lib/", 0o755), dir("usr/lib/python3/", 0o755), dir("var/", 0o755), dir("var/drop/", 0o777),
		dir("tmp/", 0o1777), dir("opt/", 0o755), dir("opt/tools/", 0o755),
		dir("usr/share/", 0o755), dir("usr/share/bash-completion/", 0o755), dir("usr/share/bash-completion/completions/", 0o755),
		dir("usr/local/", 0o755), dir("usr/local/bin/", 0o755),
		exe("usr/bin/python3"), exe("usr/bin/curl"), exe("bin/busybox"),
		{name: "bin/sh", typ: tar.TypeSymlink, link: "busybox", mode: 0o777},
		{name: "usr/bin/bash", typ: tar.TypeSymlink, link: "../../../bin/busybox", mode: 0o777},
		dir("srv/", 0o755), dir("srv/app/", 0o755), exe("srv/app/ruby"),
		{name: "usr/bin/su", typ: tar.TypeReg, mode: 0o4755, body: "su"},
		{name: "usr/bin/wall", typ: tar.TypeReg, mode: 0o2755, body: "wall"},
		{name: "usr/sbin/captool", typ: tar.TypeReg, mode: 0o755, body: "cap", pax: map[string]string{"SCHILY.xattr.security.capability": capability}},
		exe("usr/bin/perl"), exe("opt/tools/wget"),
		{name: "usr/share/bash-completion/completions/curl", typ: tar.TypeReg, mode: 0o644, body: "complete"},
		{name: "usr/local/bin/node", typ: tar.TypeReg, mode: 0o755,
			body: "\x7fELF" + string(make([]byte, 3000)) + "https://nodejs.org/download/release/v" + NodeVersion + "/node-v" + NodeVersion + ".tar.gz\x00"},
	}
	upper := []entry{
		dir("usr/", 0o755), dir("usr/bin/", 0o755), dir("opt/", 0o755), dir("opt/tools/", 0o755),
		{name: "usr/bin/.wh.perl", typ: tar.TypeReg, mode: 0o644},
		{name: "opt/tools/.wh..wh..opq", typ: tar.TypeReg, mode: 0o644},
		{name: "opt/tools/README", typ: tar.TypeReg, mode: 0o644, body: "tools"},
		{name: "srv/app", typ: tar.TypeReg, mode: 0o644, body: "a file now"},
	}
	img, err := mutate.AppendLayers(empty.Image, layer(t, lower), layer(t, upper))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Labels = map[string]string{"run.sandpit.node.version": NodeVersion}
	cfg.Config.Env = []string{"PATH=/usr/bin:/bin", "NODE_VERSION=" + NodeVersion}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

func layer(t *testing.T, entries []entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), PAXRecords: e.pax}
		if e.pax != nil {
			hdr.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Archives writes img into dir twice, as an OCI image layout tar and as a
// docker-archive, and returns their paths.
func Archives(t *testing.T, img v1.Image, dir string) (ociTar, dockerTar string) {
	t.Helper()
	ref, err := name.ParseReference("sandpit.test/inspect:1")
	if err != nil {
		t.Fatal(err)
	}
	dockerTar = filepath.Join(dir, "docker.tar")
	if err := tarball.WriteToFile(dockerTar, ref, img); err != nil {
		t.Fatal(err)
	}
	layoutDir := filepath.Join(dir, "layout")
	p, err := layout.Write(layoutDir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	ociTar = WriteTar(t, dir, "oci.tar", func(tw *tar.Writer) error { return tw.AddFS(os.DirFS(layoutDir)) })
	return ociTar, dockerTar
}

// WriteTar writes a tar named name into dir with what write puts in it and
// returns its path.
func WriteTar(t *testing.T, dir, name string, write func(*tar.Writer) error) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	if err := errors.Join(write(tw), tw.Close(), f.Close()); err != nil {
		t.Fatal(err)
	}
	return p
}
