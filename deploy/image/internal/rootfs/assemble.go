package rootfs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sandpit-run/sandpit/deploy/image/internal/inputs"
)

// SandboxUID and SandboxGID are the unprivileged user the executor runs
// code as (65532 is the distroless "nonroot" convention, clear of Debian's
// system and nobody ranges).
const (
	SandboxUID = 65532
	SandboxGID = 65532
)

// libDir is where Debian bookworm's merged-/usr layout puts the amd64
// libraries; /lib and /lib64 are symlinks into /usr, as on a bookworm system.
const libDir = "usr/lib/x86_64-linux-gnu"

// Loader is the ELF interpreter path compiled into node.
const Loader = "lib64/ld-linux-x86-64.so.2"

// Sonames are the libraries node 24 needs (`ldd node`), plus the loader.
// glibc 2.34+ has the files and dns NSS modules and libresolv built into
// libc.so.6, so /etc/nsswitch.conf works without libnss_*.so; gconv modules
// are left out because node does its own charset conversion (ICU) and never
// calls iconv.
var Sonames = []string{
	"ld-linux-x86-64.so.2",
	"libc.so.6",
	"libdl.so.2",
	"libgcc_s.so.1",
	"libm.so.6",
	"libpthread.so.0",
	"libstdc++.so.6",
}

// debsWithLibs names the pinned packages that provide Sonames.
var debsWithLibs = []string{"libc6", "libgcc-s1", "libstdc++6"}

// Assemble builds the sandbox filesystem from verified inputs. workDir
// receives the extracted node binary, which the returned FS streams from;
// keep it until the tar has been written.
func Assemble(ctx context.Context, in *inputs.Set, workDir string) (*FS, error) {
	fs := New()
	if err := addBase(fs); err != nil {
		return nil, err
	}
	if err := addNode(fs, in.NodeTarball, workDir); err != nil {
		return nil, err
	}
	if err := addLibs(ctx, fs, in); err != nil {
		return nil, err
	}
	if err := addCerts(ctx, fs, in); err != nil {
		return nil, err
	}
	if err := addInit(ctx, fs, in); err != nil {
		return nil, err
	}
	return fs, nil
}

// addBase adds the skeleton: merged-/usr links, users, name service config
// and the directories the executor relies on.
func addBase(fs *FS) error {
	steps := []error{
		fs.Symlink("lib", "usr/lib"),
		fs.Symlink("lib64", "usr/lib64"),
		fs.File("etc/passwd", 0o644, []byte(
			"root:x:0:0:root:/root:/usr/sbin/nologin\n"+
				fmt.Sprintf("sandbox:x:%d:%d:sandbox:/home/sandbox:/usr/sbin/nologin\n", SandboxUID, SandboxGID))),
		fs.File("etc/group", 0o644, []byte(
			"root:x:0:\n"+
				fmt.Sprintf("sandbox:x:%d:\n", SandboxGID))),
		fs.File("etc/nsswitch.conf", 0o644, []byte(
			"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n")),
		fs.File("etc/hosts", 0o644, []byte(
			"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")),
		// Empty, and a mount point for the executor's resolv.conf (the
		// read-only root cannot get one created): without it a sandbox
		// resolves nothing.
		fs.File("etc/resolv.conf", 0o644, nil),
		fs.Dir("tmp", 0o1777, 0, 0),
		// The executor bind-mounts the user's code here read-only.
		fs.Dir("sandbox", 0o755, 0, 0),
		fs.Dir("home/sandbox", 0o755, SandboxUID, SandboxGID),
		fs.Dir("root", 0o700, 0, 0),
		// Mount points exist in the image so a read-only rootfs never needs
		// the runtime to create them.
		fs.Dir("proc", 0o555, 0, 0),
		fs.Dir("sys", 0o555, 0, 0),
		fs.Dir("dev", 0o755, 0, 0),
	}
	for _, err := range steps {
		if err != nil {
			return fmt.Errorf("add base files: %w", err)
		}
	}
	return nil
}

// addNode takes bin/node and LICENSE from the npm package and nothing else:
// npm, npx, corepack, headers and man pages have no place in a sandbox.
func addNode(fs *FS, tarball, workDir string) error {
	f, err := os.Open(tarball)
	if err != nil {
		return fmt.Errorf("open node tarball: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("read node tarball: %w", err)
	}
	tr := tar.NewReader(zr)
	var gotNode, gotLicense bool
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read node tarball: %w", err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		switch hdr.Name {
		case "package/bin/node":
			dst := filepath.Join(workDir, "node")
			out, err := os.Create(dst)
			if err != nil {
				return fmt.Errorf("extract node: %w", err)
			}
			n, err := io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("extract node: %w", err)
			}
			if err := fs.StreamFile("usr/local/bin/node", 0o755, n, func() (io.ReadCloser, error) { return os.Open(dst) }); err != nil {
				return fmt.Errorf("add node: %w", err)
			}
			gotNode = true
		case "package/LICENSE":
			b, err := io.ReadAll(tr)
			if err != nil {
				return fmt.Errorf("read node LICENSE: %w", err)
			}
			if err := fs.File("usr/local/share/doc/node/LICENSE", 0o644, b); err != nil {
				return fmt.Errorf("add node LICENSE: %w", err)
			}
			gotLicense = true
		}
	}
	if !gotNode || !gotLicense {
		return fmt.Errorf("read node tarball: bin/node or LICENSE missing")
	}
	return nil
}

// debEntry is a file or symlink read from a .deb's data archive.
type debEntry struct {
	typ      byte
	mode     int64
	linkname string
	data     []byte
}

// readDeb returns the regular files and symlinks of a .deb for which keep
// returns true, keyed by their path in the merged-/usr layout.
func readDeb(ctx context.Context, deb string, keep func(string) bool) (map[string]*debEntry, error) {
	// dpkg-deb understands every compression Debian uses for data.tar; we
	// only need the tar stream it produces.
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("run dpkg-deb: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run dpkg-deb: %w", err)
	}
	got := map[string]*debEntry{}
	tr := tar.NewReader(out)
	var readErr error
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = fmt.Errorf("read %s: %w", filepath.Base(deb), err)
			break
		}
		p := usrMerge(strings.TrimPrefix(path.Clean("/"+hdr.Name), "/"))
		if (hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeSymlink) || !keep(p) {
			continue
		}
		e := &debEntry{typ: hdr.Typeflag, mode: hdr.Mode, linkname: hdr.Linkname}
		if hdr.Typeflag == tar.TypeReg {
			if e.data, err = io.ReadAll(tr); err != nil {
				readErr = fmt.Errorf("read %s from %s: %w", p, filepath.Base(deb), err)
				break
			}
		}
		got[p] = e
	}
	// Drain so dpkg-deb never blocks on a full pipe after an early error.
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil && readErr == nil {
		readErr = fmt.Errorf("run dpkg-deb on %s: %w: %s", filepath.Base(deb), err, strings.TrimSpace(stderr.String()))
	}
	return got, readErr
}

// DebFile returns the regular file at p (in the merged-/usr layout, no
// leading slash) of the .deb at deb.
func DebFile(ctx context.Context, deb, p string) ([]byte, error) {
	got, err := readDeb(ctx, deb, func(q string) bool { return q == p })
	if err != nil {
		return nil, err
	}
	e, ok := got[p]
	if !ok || e.typ != tar.TypeReg {
		return nil, fmt.Errorf("%s is not a file of %s", p, filepath.Base(deb))
	}
	return e.data, nil
}

// usrMerge maps a path as a bookworm .deb ships it (/lib/...) to where it
// lives on a merged-/usr system (/usr/lib/...).
func usrMerge(p string) string {
	for _, top := range []string{"bin", "sbin", "lib", "lib64"} {
		if p == top || strings.HasPrefix(p, top+"/") {
			return "usr/" + p
		}
	}
	return p
}

// addLibs adds each soname node needs, following symlinks inside the
// packages (libstdc++.so.6 -> libstdc++.so.6.0.30) so the links and the real
// files both come along, and nothing else from the packages.
func addLibs(ctx context.Context, fs *FS, in *inputs.Set) error {
	pool := map[string]*debEntry{}
	inLibDirs := func(p string) bool {
		return strings.HasPrefix(p, libDir+"/") || strings.HasPrefix(p, "usr/lib64/")
	}
	for _, name := range debsWithLibs {
		deb, ok := in.Debs[name]
		if !ok {
			return fmt.Errorf("add libraries: input %s missing", name)
		}
		got, err := readDeb(ctx, deb, inLibDirs)
		if err != nil {
			return fmt.Errorf("add libraries: %w", err)
		}
		for p, e := range got {
			if _, dup := pool[p]; dup {
				return fmt.Errorf("add libraries: %s shipped by two packages", p)
			}
			pool[p] = e
		}
	}
	var take func(p string, depth int) error
	take = func(p string, depth int) error {
		if _, done := fs.Get(p); done {
			return nil
		}
		if depth > 8 {
			return fmt.Errorf("add %s: symlink loop", p)
		}
		e, ok := pool[p]
		if !ok {
			return fmt.Errorf("add %s: not in the pinned packages", p)
		}
		if e.typ == tar.TypeSymlink {
			target := e.linkname
			// Absolute targets would escape the rootfs when it is used from
			// the host (tests, debugging); relative ones work both ways.
			if strings.HasPrefix(target, "/") {
				abs := usrMerge(strings.TrimPrefix(path.Clean(target), "/"))
				rel, err := filepath.Rel(path.Dir(p), abs)
				if err != nil {
					return fmt.Errorf("add %s: %w", p, err)
				}
				target = filepath.ToSlash(rel)
			}
			if err := fs.Symlink(p, target); err != nil {
				return err
			}
			return take(path.Join(path.Dir(p), target), depth+1)
		}
		// Keep only the execute bits Debian set (ld.so and libc.so.6 are
		// runnable); drop anything like setuid, group/other write.
		return fs.File(p, e.mode&0o755, e.data)
	}
	want := []string{"usr/" + Loader}
	for _, so := range Sonames {
		want = append(want, libDir+"/"+so)
	}
	for _, p := range want {
		if err := take(p, 0); err != nil {
			return fmt.Errorf("add libraries: %w", err)
		}
	}
	for _, p := range append([]string{Loader}, want...) {
		e, err := fs.Resolve(p)
		if err != nil {
			return fmt.Errorf("add libraries: %w", err)
		}
		if e.Type != tar.TypeReg {
			return fmt.Errorf("add libraries: %s is not a regular file", p)
		}
	}
	return nil
}

// addCerts generates /etc/ssl/certs/ca-certificates.crt from the Mozilla CA
// set in the pinned ca-certificates package. update-ca-certificates would
// normally write it at install time; we concatenate the same certificates in
// sorted order so the bundle is a pure function of the package, and take
// nothing else (no scripts, no per-certificate links).
func addCerts(ctx context.Context, fs *FS, in *inputs.Set) error {
	deb, ok := in.Debs["ca-certificates"]
	if !ok {
		return fmt.Errorf("add CA bundle: input ca-certificates missing")
	}
	const dir = "usr/share/ca-certificates/mozilla/"
	got, err := readDeb(ctx, deb, func(p string) bool {
		return strings.HasPrefix(p, dir) && strings.HasSuffix(p, ".crt")
	})
	if err != nil {
		return fmt.Errorf("add CA bundle: %w", err)
	}
	names := make([]string, 0, len(got))
	for p, e := range got {
		if e.typ != tar.TypeReg {
			return fmt.Errorf("add CA bundle: %s is not a regular file", p)
		}
		names = append(names, p)
	}
	if len(names) == 0 {
		return fmt.Errorf("add CA bundle: no certificates in %s", filepath.Base(deb))
	}
	sort.Strings(names)
	var bundle bytes.Buffer
	for _, p := range names {
		data := got[p].data
		if !bytes.Contains(data, []byte("-----BEGIN CERTIFICATE-----")) {
			return fmt.Errorf("add CA bundle: %s is not a PEM certificate", p)
		}
		bundle.Write(data)
		if !bytes.HasSuffix(data, []byte("\n")) {
			bundle.WriteByte('\n')
		}
	}
	if err := fs.File("etc/ssl/certs/ca-certificates.crt", 0o644, bundle.Bytes()); err != nil {
		return fmt.Errorf("add CA bundle: %w", err)
	}
	return nil
}

// Init is where the image's init lives: tini, PID 1 of every sandbox, with
// node as its only child. It reaps the orphans node's children leave (node
// does not, so as PID 1 they would pile up as zombies against the pids
// limit), forwards signals to node and exits with node's status (128+N when
// a signal N ended node, which is how the runtime reports a signal anyway).
const Init = "usr/bin/tini"

// addInit takes tini's static build (no library of its own to go wrong) and
// its copyright file from the pinned package, and nothing else.
func addInit(ctx context.Context, fs *FS, in *inputs.Set) error {
	deb, ok := in.Debs["tini"]
	if !ok {
		return fmt.Errorf("add init: input tini missing")
	}
	const (
		static    = "usr/bin/tini-static"
		copyright = "usr/share/doc/tini/copyright"
	)
	got, err := readDeb(ctx, deb, func(p string) bool { return p == static || p == copyright })
	if err != nil {
		return fmt.Errorf("add init: %w", err)
	}
	for _, p := range []string{static, copyright} {
		if e, ok := got[p]; !ok || e.typ != tar.TypeReg {
			return fmt.Errorf("add init: %s is not a file of %s", p, filepath.Base(deb))
		}
	}
	if err := fs.File(Init, 0o755, got[static].data); err != nil {
		return fmt.Errorf("add init: %w", err)
	}
	if err := fs.File(copyright, 0o644, got[copyright].data); err != nil {
		return fmt.Errorf("add init: %w", err)
	}
	return nil
}
