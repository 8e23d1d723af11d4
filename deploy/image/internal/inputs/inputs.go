// Package inputs fetches the pinned inputs of the image into a cache directory
// and verifies them against the checksums in package pins.
//
// Fetching goes through the ordinary clients (npm pack, apt-get download)
// rather than raw HTTP, because those are what reach the registries on the
// machines this runs on (mirrors, proxies and credentials are their
// configuration, not ours). Trust, however, rests only on the pinned
// checksums: a cached or freshly downloaded file that does not match is never
// used.
package inputs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/sandpit-run/sandpit/deploy/image/internal/pins"
)

// Set is the verified inputs of one build: paths to files in the cache.
type Set struct {
	// Node is the release NodeTarball holds.
	Node pins.Node
	// NodeTarball is the npm tarball of pins.NodePackage.
	NodeTarball string
	// Debs maps a Debian package name to its verified .deb file.
	Debs map[string]string
}

// Fetcher fetches inputs into Dir, reusing files that are already there and
// still match their pins.
type Fetcher struct {
	Dir string
	// Node is the Node.js release to fetch; the zero Node is the default
	// line's.
	Node pins.Node
	Log  *slog.Logger
}

// DefaultCacheDir is $XDG_CACHE_HOME/sandpit/image, or ~/.cache/sandpit/image.
func DefaultCacheDir() (string, error) {
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("find home directory: %w", err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "sandpit", "image"), nil
}

// Fetch makes sure every pinned input is in the cache and verified.
func (f *Fetcher) Fetch(ctx context.Context) (*Set, error) {
	if err := os.MkdirAll(f.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache dir: %w", err)
	}
	pin := f.Node
	if pin.Version == "" {
		pin, _ = pins.NodeByMajor(pins.DefaultNodeMajor)
	}
	node, err := f.node(ctx, pin)
	if err != nil {
		return nil, err
	}
	set := &Set{Node: pin, NodeTarball: node, Debs: map[string]string{}}
	for _, d := range pins.Debs {
		p, err := f.deb(ctx, d)
		if err != nil {
			return nil, err
		}
		set.Debs[d.Name] = p
	}
	return set, nil
}

func (f *Fetcher) logger() *slog.Logger {
	if f.Log != nil {
		return f.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (f *Fetcher) node(ctx context.Context, pin pins.Node) (string, error) {
	name := fmt.Sprintf("%s-%s.tgz", pins.NodePackage, pin.Version)
	dst := filepath.Join(f.Dir, name)
	verify := func(p string) error {
		if err := VerifySHA256(p, pin.SHA256); err != nil {
			return err
		}
		return VerifyIntegrity(p, pin.Integrity)
	}
	if cached(dst, verify, f.logger()) {
		return dst, nil
	}
	f.logger().Info("fetching", "package", pins.NodePackage, "version", pin.Version)
	tmp, err := os.MkdirTemp(f.Dir, ".fetch-node-")
	if err != nil {
		return "", fmt.Errorf("create temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	spec := pins.NodePackage + "@" + pin.Version
	// --ignore-scripts: packing a registry spec runs no scripts today, but
	// nothing from the package should ever run on the build machine.
	if err := run(ctx, tmp, "npm", "pack", "--ignore-scripts", "--pack-destination", tmp, spec); err != nil {
		return "", fmt.Errorf("npm pack %s: %w", spec, err)
	}
	return dst, install(filepath.Join(tmp, name), dst, verify)
}

// FetchDeb makes sure the pinned package d is in the cache, verified, and
// returns its path: for a package only some images take.
func (f *Fetcher) FetchDeb(ctx context.Context, d pins.Deb) (string, error) {
	if err := os.MkdirAll(f.Dir, 0o755); err != nil {
		return "", fmt.Errorf("create cache dir: %w", err)
	}
	return f.deb(ctx, d)
}

func (f *Fetcher) deb(ctx context.Context, d pins.Deb) (string, error) {
	dst := filepath.Join(f.Dir, fmt.Sprintf("%s_%s_%s.deb", d.Name, d.Version, d.Arch))
	verify := func(p string) error { return VerifySHA256(p, d.SHA256) }
	if cached(dst, verify, f.logger()) {
		return dst, nil
	}
	f.logger().Info("fetching", "package", d.Name, "version", d.Version)
	tmp, err := os.MkdirTemp(f.Dir, ".fetch-deb-")
	if err != nil {
		return "", fmt.Errorf("create temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	spec := d.Name + ":" + d.Arch + "=" + d.Version
	if d.Arch == "all" {
		spec = d.Name + "=" + d.Version
	}
	if err := run(ctx, tmp, "apt-get", "download", "-q", spec); err != nil {
		return "", fmt.Errorf("apt-get download %s (is the apt index current, `apt-get update`, and is the pin still on the mirror?): %w", spec, err)
	}
	// apt-get names the file itself (epochs become %3a); take the one .deb.
	got, err := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if err != nil || len(got) != 1 {
		return "", fmt.Errorf("find downloaded %s: want one .deb, got %v", spec, got)
	}
	return dst, install(got[0], dst, verify)
}

// cached reports whether p exists and passes verify. A file that fails is
// removed so a fresh download replaces it.
func cached(p string, verify func(string) error, log *slog.Logger) bool {
	if _, err := os.Stat(p); err != nil {
		return false
	}
	if err := verify(p); err != nil {
		log.Warn("cached input fails verification, fetching again", "path", p, "err", err)
		_ = os.Remove(p)
		return false
	}
	return true
}

// install verifies src and renames it to dst, so dst only ever holds a
// verified file (a crash mid-download leaves a temp dir, not a bad input).
func install(src, dst string, verify func(string) error) error {
	if err := verify(src); err != nil {
		return fmt.Errorf("verify download %s: %w", filepath.Base(dst), err)
	}
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("move %s into cache: %w", filepath.Base(dst), err)
	}
	return nil
}

func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("run %s: %w: %s", name, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// ErrMismatch is wrapped by the verify functions when a checksum differs.
var ErrMismatch = errors.New("checksum mismatch")

// VerifySHA256 checks that the file at p has the hex sha256 want.
func VerifySHA256(p, want string) error {
	sum, err := digestFile(p, sha256.New())
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(sum); got != want {
		return fmt.Errorf("verify %s: sha256 %s, pinned %s: %w", filepath.Base(p), got, want, ErrMismatch)
	}
	return nil
}

// VerifyIntegrity checks the file at p against an npm-style sha512
// subresource-integrity string ("sha512-BASE64").
func VerifyIntegrity(p, integrity string) error {
	b64, ok := strings.CutPrefix(integrity, "sha512-")
	if !ok {
		return fmt.Errorf("verify %s: unsupported integrity %q", filepath.Base(p), integrity)
	}
	sum, err := digestFile(p, sha512.New())
	if err != nil {
		return err
	}
	if got := base64.StdEncoding.EncodeToString(sum); got != b64 {
		return fmt.Errorf("verify %s: integrity sha512-%s, pinned %s: %w", filepath.Base(p), got, integrity, ErrMismatch)
	}
	return nil
}

func digestFile(p string, h hash.Hash) ([]byte, error) {
	fh, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open input: %w", err)
	}
	defer fh.Close()
	if _, err := io.Copy(h, fh); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Base(p), err)
	}
	return h.Sum(nil), nil
}
