//go:build integration

package build

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"debug/elf"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/sandpit-run/sandpit/deploy/image/internal/image"
	"github.com/sandpit-run/sandpit/deploy/image/internal/inputs"
	"github.com/sandpit-run/sandpit/deploy/image/internal/pins"
)

// The tests build the real image from the real pinned inputs: the point is
// to prove properties of the artifact the executor runs, not of a mock.
// Inputs are downloaded into the cache on first use ($SANDPIT_IMAGE_CACHE,
// else the builder's default cache).

var (
	testDir string

	fetchOnce sync.Once
	fetched   *inputs.Set
	fetchErr  error

	buildOnce   sync.Once
	builtTar    string
	builtDigest v1.Hash
	buildErr    error
)

func TestMain(m *testing.M) {
	var err error
	if testDir, err = os.MkdirTemp("", "sandpit-image-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(testDir)
	os.Exit(code)
}

func cacheDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("SANDPIT_IMAGE_CACHE"); d != "" {
		return d
	}
	d, err := inputs.DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func testInputs(t *testing.T) *inputs.Set {
	t.Helper()
	fetchOnce.Do(func() {
		f := &inputs.Fetcher{Dir: cacheDir(t)}
		fetched, fetchErr = f.Fetch(context.Background())
	})
	if fetchErr != nil {
		t.Fatalf("fetch inputs: %v", fetchErr)
	}
	return fetched
}

func runBuild(t *testing.T, out string) v1.Hash {
	t.Helper()
	d, err := Run(context.Background(), Options{
		Out:      out,
		CacheDir: cacheDir(t),
		Name:     DefaultName,
		Created:  time.Unix(0, 0),
	})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return d
}

// built returns the OCI layout tar of the default build, made once per test
// binary and shared by the tests that only inspect it.
func built(t *testing.T) (string, v1.Hash) {
	t.Helper()
	buildOnce.Do(func() {
		builtTar = filepath.Join(testDir, "shared.tar")
		d, err := Run(context.Background(), Options{
			Out:      builtTar,
			CacheDir: cacheDir(t),
			Name:     DefaultName,
			Created:  time.Unix(0, 0),
		})
		builtDigest, buildErr = d, err
	})
	if buildErr != nil {
		t.Fatalf("build: %v", buildErr)
	}
	return builtTar, builtDigest
}

func defaultNode() pins.Node {
	n, _ := pins.NodeByMajor(pins.DefaultNodeMajor)
	return n
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func TestReproducibleDigest(t *testing.T) {
	first, d1 := built(t)
	second := filepath.Join(t.TempDir(), "again.tar")
	d2 := runBuild(t, second)
	if d1 != d2 {
		t.Fatalf("manifest digests differ between identical builds: %s vs %s", d1, d2)
	}
	// Not only the manifest: the whole archive is byte-identical.
	if a, b := fileSHA(t, first), fileSHA(t, second); a != b {
		t.Fatalf("OCI layout tars differ: %s vs %s", a, b)
	}
	t.Logf("digest %s", d1)
}

func TestInputChangeChangesDigest(t *testing.T) {
	_, base := built(t)
	in := testInputs(t)

	digestOf := func(t *testing.T, in *inputs.Set, created time.Time) v1.Hash {
		t.Helper()
		img, err := Image(context.Background(), in, t.TempDir(), created)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}

	t.Run("node tarball", func(t *testing.T) {
		// A stand-in node package: same layout, different binary.
		fake := filepath.Join(t.TempDir(), "node.tgz")
		writeTgz(t, fake, map[string]string{
			"package/bin/node": "not really node\n",
			"package/LICENSE":  "MIT\n",
		})
		changed := &inputs.Set{NodeTarball: fake, Debs: in.Debs}
		if d := digestOf(t, changed, time.Unix(0, 0)); d == base {
			t.Fatalf("different node binary gave the same digest %s", d)
		}
	})
	t.Run("creation time", func(t *testing.T) {
		if d := digestOf(t, in, time.Unix(1700000000, 0)); d == base {
			t.Fatalf("different SOURCE_DATE_EPOCH gave the same digest %s", d)
		}
	})
}

func writeTgz(t *testing.T, p string, files map[string]string) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range files {
		mode := int64(0o644)
		if strings.HasSuffix(name, "/node") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// loadLayout unpacks the OCI layout tar and returns the single image in it
// together with its descriptor in index.json.
func loadLayout(t *testing.T, tarPath string) (v1.Image, v1.Descriptor) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("unexpected entry %s in layout tar", hdr.Name)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json has %d manifests, want 1", len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img, im.Manifests[0]
}

type fsEntry struct {
	hdr  *tar.Header
	data []byte
}

// flatten returns the image's merged filesystem, keyed by clean path. File
// contents are kept only for small files (the test reads /etc files).
func flatten(t *testing.T, img v1.Image) map[string]fsEntry {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	out := map[string]fsEntry{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		e := fsEntry{hdr: hdr}
		if hdr.Typeflag == tar.TypeReg && hdr.Size < 1<<20 {
			if e.data, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
		out[strings.Trim(filepath.Clean("/"+hdr.Name), "/")] = e
	}
	return out
}

func TestImageManifestAndConfig(t *testing.T) {
	tarPath, digest := built(t)
	img, desc := loadLayout(t, tarPath)
	if desc.Digest != digest {
		t.Errorf("index.json digest %s, builder printed %s", desc.Digest, digest)
	}
	if got := desc.Annotations["io.containerd.image.name"]; got != "sandpit.local/node:24" {
		t.Errorf("io.containerd.image.name = %q", got)
	}
	if got := desc.Annotations["org.opencontainers.image.ref.name"]; got != "24" {
		t.Errorf("org.opencontainers.image.ref.name = %q", got)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	checks := []struct {
		name      string
		got, want any
	}{
		{"os", cf.OS, "linux"},
		{"architecture", cf.Architecture, "amd64"},
		{"created", cf.Created.Unix(), int64(0)},
		{"entrypoint", strings.Join(c.Entrypoint, " "), "/usr/bin/tini -- /usr/local/bin/node"},
		{"user", c.User, "65532:65532"},
		{"workdir", c.WorkingDir, "/sandbox"},
		{"env", strings.Join(c.Env, " "), "PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
		{"node label", c.Labels["run.sandpit.node.version"], defaultNode().Version},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

var (
	// Matched against every path component, so a directory such as
	// node_modules/npm is caught as well as a binary.
	forbidden = map[string]*regexp.Regexp{
		"shell":           regexp.MustCompile(`^(sh|bash|dash|ash|zsh|ksh|mksh|csh|tcsh|fish|busybox|toybox)$`),
		"interpreter":     regexp.MustCompile(`^(python[0-9.]*|perl[0-9.]*|ruby[0-9.]*|irb|php[0-9.]*|lua[0-9.]*|luajit|tclsh[0-9.]*|wish[0-9.]*|guile.*|awk|gawk|mawk|expect|deno|bun)$`),
		"network tool":    regexp.MustCompile(`^(curl|wget|nc|ncat|netcat|nc\.openbsd|nc\.traditional|socat|telnet|ssh|scp|sftp|ftp|rsync|openssl)$`),
		"package manager": regexp.MustCompile(`^(apt.*|dpkg.*|npm|npx|yarn|yarnpkg|pnpm|pnpx|corepack|pip[0-9.]*|gem)$`),
		"compiler":        regexp.MustCompile(`^(gcc.*|cc|c\+\+|g\+\+.*|cpp|clang.*|tcc|ld|ld\.(bfd|gold|lld)|lld|as|make|gmake)$`),
	}
	sharedObject = regexp.MustCompile(`\.so(\.[0-9]+)*$`)
	// Every regular file the image may hold. A bump that adds a file fails
	// here on purpose, so someone looks at it.
	allowedFiles = []*regexp.Regexp{
		regexp.MustCompile(`^etc/(passwd|group|hosts|nsswitch\.conf|resolv\.conf)$`),
		regexp.MustCompile(`^etc/ssl/certs/ca-certificates\.crt$`),
		regexp.MustCompile(`^usr/local/bin/node$`),
		regexp.MustCompile(`^usr/local/share/doc/node/LICENSE$`),
		regexp.MustCompile(`^usr/bin/tini$`),
		regexp.MustCompile(`^usr/share/doc/tini/copyright$`),
		regexp.MustCompile(`^usr/lib/x86_64-linux-gnu/(ld-linux-x86-64\.so\.2|libc\.so\.6|libdl\.so\.2|libgcc_s\.so\.1|libm\.so\.6|libpthread\.so\.0|libstdc\+\+\.so\.6\.0\.[0-9]+)$`),
	}
)

// violations lists every way files breaks the image's rules: no shells,
// interpreters, network tools, package managers or compilers; no setuid or
// setgid; executables are node, tini (the one other program: PID 1) and
// shared objects only; only the allowed
// files; root ownership and a fixed mtime throughout.
func violations(files map[string]fsEntry) []string {
	return violationsAllowing(files, nil)
}

// violationsAllowing is violations with more regular files allowed (a
// variant's npm packages). Whatever extra allows, the other rules still
// hold; on top, nothing under a node_modules directory may be executable
// or a native addon.
func violationsAllowing(files map[string]fsEntry, extra []*regexp.Regexp) []string {
	var bad []string
	for p, e := range files {
		for _, part := range strings.Split(p, "/") {
			for what, re := range forbidden {
				if re.MatchString(part) {
					bad = append(bad, fmt.Sprintf("%s: looks like a %s", p, what))
				}
			}
		}
		h := e.hdr
		if h.Mode&(0o4000|0o2000) != 0 {
			bad = append(bad, fmt.Sprintf("%s: setuid/setgid mode %o", p, h.Mode))
		}
		wantOwner := 0
		if p == "home/sandbox" {
			wantOwner = 65532
		}
		if h.Uid != wantOwner || h.Gid != wantOwner {
			bad = append(bad, fmt.Sprintf("%s: owner %d:%d, want %d:%d", p, h.Uid, h.Gid, wantOwner, wantOwner))
		}
		if !h.ModTime.Equal(time.Unix(0, 0)) {
			bad = append(bad, fmt.Sprintf("%s: mtime %v, want the epoch", p, h.ModTime))
		}
		if h.Typeflag != tar.TypeReg {
			if h.Typeflag != tar.TypeDir && h.Typeflag != tar.TypeSymlink {
				bad = append(bad, fmt.Sprintf("%s: unexpected type %q", p, h.Typeflag))
			}
			continue
		}
		if h.Mode&0o111 != 0 && p != "usr/local/bin/node" && p != "usr/bin/tini" && !sharedObject.MatchString(p) {
			bad = append(bad, fmt.Sprintf("%s: executable (%o) but neither node, tini nor a shared object", p, h.Mode))
		}
		if inNodeModules(p) {
			if h.Mode&0o111 != 0 {
				bad = append(bad, fmt.Sprintf("%s: executable (%o) npm package file", p, h.Mode))
			}
			if strings.HasSuffix(p, ".node") {
				bad = append(bad, fmt.Sprintf("%s: native addon", p))
			}
		}
		allowed := false
		for _, re := range append(slices.Clip(allowedFiles), extra...) {
			allowed = allowed || re.MatchString(p)
		}
		if !allowed {
			bad = append(bad, fmt.Sprintf("%s: unexpected file in the image", p))
		}
	}

	return bad
}

func inNodeModules(p string) bool {
	return strings.HasPrefix(p, "node_modules/") || strings.Contains(p, "/node_modules/")
}

func TestImageContents(t *testing.T) {
	tarPath, _ := built(t)
	img, _ := loadLayout(t, tarPath)
	files := flatten(t, img)
	if len(files) == 0 {
		t.Fatal("image filesystem is empty")
	}
	for _, v := range violations(files) {
		t.Error(v)
	}

	node, ok := files["usr/local/bin/node"]
	if !ok || node.hdr.Typeflag != tar.TypeReg || node.hdr.Mode&0o111 == 0 {
		t.Errorf("usr/local/bin/node missing or not an executable file")
	}
	// tini, the sandbox's PID 1, is a static executable: no loader, no
	// library of its own.
	tini, ok := files["usr/bin/tini"]
	if !ok || tini.hdr.Typeflag != tar.TypeReg || tini.hdr.Mode&0o111 == 0 {
		t.Errorf("usr/bin/tini missing or not an executable file")
	} else if ef, err := elf.NewFile(bytes.NewReader(tini.data)); err != nil {
		t.Errorf("usr/bin/tini is not an ELF file: %v", err)
	} else {
		for _, p := range ef.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("usr/bin/tini has an ELF interpreter: it is not the static build")
			}
		}
	}
	if !regexp.MustCompile(`(?m)^sandbox:x:65532:65532:[^:]*:/home/sandbox:`).Match(files["etc/passwd"].data) {
		t.Errorf("etc/passwd has no sandbox user with uid 65532:\n%s", files["etc/passwd"].data)
	}
	if !bytes.Contains(files["etc/group"].data, []byte("sandbox:x:65532:")) {
		t.Errorf("etc/group has no sandbox group 65532")
	}
	if !bytes.Contains(files["etc/nsswitch.conf"].data, []byte("hosts: files dns")) {
		t.Errorf("etc/nsswitch.conf lacks hosts: files dns")
	}
	if d, ok := files["tmp"]; !ok || d.hdr.Mode&0o7777 != 0o1777 {
		t.Errorf("tmp missing or not 1777")
	}
	if d, ok := files["sandbox"]; !ok || d.hdr.Typeflag != tar.TypeDir {
		t.Errorf("sandbox dir missing")
	}
	bundle := files["etc/ssl/certs/ca-certificates.crt"].data
	n := 0
	for rest := bundle; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			t.Errorf("CA bundle certificate %d: %v", n, err)
		}
		n++
	}
	// Mozilla's set has well over 100 roots; a handful would mean the
	// bundle was cut short.
	if n < 100 {
		t.Errorf("CA bundle has %d certificates, want > 100", n)
	}
	t.Logf("%d paths, %d CA certificates", len(files), n)
}

// extractRootfs writes the image's merged filesystem under a new directory.
func extractRootfs(t *testing.T, img v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Clean("/" + hdr.Name)
		p := filepath.Join(dir, name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(hdr.Linkname, p); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, os.FileMode(hdr.Mode&0o777))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func TestNodeRunsFromRootfs(t *testing.T) {
	tarPath, _ := built(t)
	img, _ := loadLayout(t, tarPath)
	dir := extractRootfs(t, img)
	want := "v" + defaultNode().Version

	t.Run("image loader", func(t *testing.T) {
		// The image's own ld.so and libraries, not the host's: the loader is
		// reached through the image's /lib64 link and searches only the
		// image's library directories.
		cmd := exec.Command(filepath.Join(dir, "lib64/ld-linux-x86-64.so.2"),
			"--library-path", filepath.Join(dir, "usr/lib/x86_64-linux-gnu")+":"+filepath.Join(dir, "lib/x86_64-linux-gnu"),
			filepath.Join(dir, "usr/local/bin/node"), "--version")
		cmd.Env = []string{}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("node --version: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Fatalf("node --version = %q, want %q", got, want)
		}
	})

	t.Run("chroot as sandbox user", func(t *testing.T) {
		if os.Geteuid() != 0 {
			skipUnlessCI(t, "chroot needs root")
		}
		// Inside the rootfs alone, as uid 65532: proves the loader path,
		// the merged-/usr links, the passwd entry and the CA bundle work
		// with nothing from the host.
		script := `const os = require("os"), tls = require("tls");
console.log(process.version, process.getuid(), os.userInfo().username, tls.rootCertificates.length > 0, require("fs").readFileSync(process.env.SSL_CERT_FILE).length > 0)`
		cmd := exec.Command("/usr/local/bin/node", "-e", script)
		cmd.Dir = "/"
		cmd.Env = []string{"PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "HOME=/home/sandbox"}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Chroot:     dir,
			Credential: &syscall.Credential{Uid: 65532, Gid: 65532},
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("node in chroot: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != want+" 65532 sandbox true true" {
			t.Fatalf("node in chroot printed %q", got)
		}
	})

	t.Run("entrypoint in chroot", func(t *testing.T) {
		if os.Geteuid() != 0 {
			skipUnlessCI(t, "chroot needs root")
		}
		// The image's entrypoint as it is: tini runs node, which prints
		// its parent's pid (tini's) and exits 7; tini exits with node's
		// status.
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		argv := append(slices.Clone(cfg.Config.Entrypoint), "-e", `console.log(process.ppid); process.exit(7)`)
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = "/"
		cmd.Env = []string{"PATH=/usr/local/bin"}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Chroot:     dir,
			Credential: &syscall.Credential{Uid: 65532, Gid: 65532},
		}
		out, err := cmd.Output()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 7 {
			t.Fatalf("entrypoint: %v, want exit status 7\n%s", err, out)
		}
		if got, want := strings.TrimSpace(string(out)), strconv.Itoa(cmd.Process.Pid); got != want {
			t.Fatalf("node's parent is pid %s, want tini's, %s", got, want)
		}
	})
}

func TestAppendDirLayer(t *testing.T) {
	tarPath, _ := built(t)
	base, _ := loadLayout(t, tarPath)
	src := t.TempDir()
	mod := filepath.Join(src, "left-pad")
	if err := os.MkdirAll(mod, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mod, "index.js"), []byte("module.exports = s => s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mod, "package.json"), []byte(`{"name":"left-pad"}`), 0o664); err != nil {
		t.Fatal(err)
	}
	build := func() v1.Image {
		img, err := image.AppendDir(base, src, "usr/local/lib/node_modules", t.TempDir(), time.Unix(0, 0), "test: node_modules")
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	a, b := build(), build()
	da, _ := a.Digest()
	db, _ := b.Digest()
	bd, _ := base.Digest()
	if da != db {
		t.Errorf("appending the same directory twice gave %s and %s", da, db)
	}
	if da == bd {
		t.Errorf("appended image has the base digest")
	}
	files := flatten(t, a)
	e, ok := files["usr/local/lib/node_modules/left-pad/index.js"]
	if !ok {
		t.Fatal("appended file missing from the flattened image")
	}
	if e.hdr.Uid != 0 || e.hdr.Mode != 0o644 {
		t.Errorf("appended file owner %d mode %o, want 0 and 644", e.hdr.Uid, e.hdr.Mode)
	}
	if _, ok := files["usr/local/bin/node"]; !ok {
		t.Error("base layer lost after append")
	}
}

// TestViolationsCatchForbidden proves the content check is not vacuous: each
// kind of thing the image must not contain is reported.
func TestViolationsCatchForbidden(t *testing.T) {
	epoch := time.Unix(0, 0)
	reg := func(mode int64) fsEntry {
		return fsEntry{hdr: &tar.Header{Typeflag: tar.TypeReg, Mode: mode, ModTime: epoch}}
	}
	cases := map[string]fsEntry{
		"bin/sh":             reg(0o755),
		"usr/bin/busybox":    reg(0o755),
		"usr/bin/python3.11": reg(0o755),
		"usr/bin/perl":       reg(0o755),
		"usr/bin/curl":       reg(0o755),
		"usr/bin/openssl":    reg(0o755),
		"usr/bin/apt-get":    reg(0o755),
		"usr/local/lib/node_modules/npm/index.js": reg(0o644),
		"usr/local/bin/corepack":                  reg(0o755),
		"usr/bin/gcc-12":                          reg(0o755),
		"usr/bin/ld":                              reg(0o755),
		"usr/bin/make":                            reg(0o755),
		"usr/lib/x86_64-linux-gnu/libc.so.6":      reg(0o4755),
		"usr/local/bin/helper":                    reg(0o755),
		"usr/share/doc/readme":                    reg(0o644),
	}
	for p, e := range cases {
		got := violations(map[string]fsEntry{p: e})
		if len(got) == 0 {
			t.Errorf("%s (mode %o) passed the content check", p, e.hdr.Mode)
		}
	}
	// A variant's node_modules allowance does not let executables, native
	// addons, package managers or setuid files through.
	nodeModules := []*regexp.Regexp{regexp.MustCompile(`^node_modules/`)}
	cases = map[string]fsEntry{
		"node_modules/x/bin/run.sh":        reg(0o755),
		"node_modules/x/cli.js":            reg(0o755),
		"node_modules/x/build/x.node":      reg(0o644),
		"node_modules/x/lib.so.1":          reg(0o755),
		"node_modules/npm/index.js":        reg(0o644),
		"node_modules/.bin/npx":            reg(0o644),
		"node_modules/x/index.js":          reg(0o4644),
		"node_modules/x/node_modules/y.js": reg(0o744),
	}
	if got := violationsAllowing(map[string]fsEntry{"node_modules/x/index.js": reg(0o644)}, nodeModules); len(got) != 0 {
		t.Errorf("plain npm package file flagged: %v", got)
	}
	for p, e := range cases {
		got := violationsAllowing(map[string]fsEntry{p: e}, nodeModules)
		if len(got) == 0 {
			t.Errorf("%s (mode %o) passed the variant content check", p, e.hdr.Mode)
		}
	}
	// And the legitimate loader passes.
	if got := violations(map[string]fsEntry{"usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": reg(0o755)}); len(got) != 0 {
		t.Errorf("ld.so flagged: %v", got)
	}
}

// skipUnlessCI skips a test that lacks what it needs on a developer's
// machine, but fails it under CI (CI=true), where everything must be there.
func skipUnlessCI(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI: %s", why)
	}
	t.Skip(why)
}
