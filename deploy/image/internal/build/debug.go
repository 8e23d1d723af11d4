package build

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sandpit-run/sandpit/deploy/image/internal/image"
	"github.com/sandpit-run/sandpit/deploy/image/internal/inputs"
	"github.com/sandpit-run/sandpit/deploy/image/internal/pins"
	"github.com/sandpit-run/sandpit/deploy/image/internal/rootfs"
	"github.com/sandpit-run/sandpit/deploy/image/variants"
)

// DebugShellPath is where node-debug's shell is; sh links to it.
const DebugShellPath = "/usr/bin/busybox"

// DebugImage returns base plus one layer with busybox's static build at
// DebugShellPath and /usr/bin/sh linking to it: a shell for an operator
// diagnosing a sandbox, which no other image has.
func DebugImage(ctx context.Context, base v1.Image, v *variants.Variant, f *inputs.Fetcher, workDir string, created time.Time) (v1.Image, error) {
	deb, err := f.FetchDeb(ctx, pins.DebugShell)
	if err != nil {
		return nil, fmt.Errorf("variant %s: %w", v.Name, err)
	}
	bin, err := rootfs.DebFile(ctx, deb, "usr/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("variant %s: %w", v.Name, err)
	}
	dir := filepath.Join(workDir, "debug-layer")
	if err := os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, DebugShellPath), bin, 0o755); err != nil {
		return nil, err
	}
	if err := os.Symlink("busybox", filepath.Join(dir, "usr/bin/sh")); err != nil {
		return nil, err
	}
	img, err := image.AppendDir(base, dir, "/", workDir, created,
		fmt.Sprintf("sandpit-image: variant %s: %s %s at %s, sh", v.Name, pins.DebugShell.Name, pins.DebugShell.Version, DebugShellPath))
	if err != nil {
		return nil, fmt.Errorf("variant %s: %w", v.Name, err)
	}
	return labelled(img, v, map[string]string{"run.sandpit.debian." + pins.DebugShell.Name: pins.DebugShell.Version})
}

// FilesImage returns base plus one layer with the files of an operator's
// profile v, each 0644 (read-only to the sandbox user, never executable),
// and v's labels.
func FilesImage(base v1.Image, v *variants.Variant, workDir string, created time.Time) (v1.Image, error) {
	dir := filepath.Join(workDir, "files-layer")
	var dests []string
	for _, f := range v.Files {
		b, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, fmt.Errorf("profile %s: %w", v.Name, err)
		}
		p := filepath.Join(dir, filepath.FromSlash(f.Dest))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return nil, err
		}
		dests = append(dests, f.Dest)
	}
	img, err := image.AppendDir(base, dir, "/", workDir, created, fmt.Sprintf("sandpit-image: profile %s: files %v", v.Name, dests))
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", v.Name, err)
	}
	return labelled(img, v, nil)
}
