// Package image turns assembled filesystems into OCI image layers and the
// sandbox image's config, using go-containerregistry.
//
// Layers are compressed here, once, with compress/gzip and an empty gzip
// header (no name, no mtime), instead of letting go-containerregistry
// compress on demand: the compressed bytes are what the manifest digest
// covers, so they must come from one deterministic writer, and compressing a
// 130 MB layer once instead of per read also saves time.
package image

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/sandpit-run/sandpit/deploy/image/internal/rootfs"
)

// Settings of the sandbox image's config. The executor overrides User and
// Env per execution anyway; these defaults make a bare `ctr run` safe too.
const (
	Node       = "/usr/local/bin/node"
	Init       = "/" + rootfs.Init
	User       = "65532:65532"
	WorkingDir = "/sandbox"
	CABundle   = "/etc/ssl/certs/ca-certificates.crt"
)

// LayerFromFS writes fs as a gzip-compressed tar into a new file in workDir
// and returns it as an OCI layer backed by that file. Keep workDir until the
// image has been written.
func LayerFromFS(fs *rootfs.FS, workDir string, mtime time.Time) (v1.Layer, error) {
	f, err := os.CreateTemp(workDir, "layer-*.tar.gz")
	if err != nil {
		return nil, fmt.Errorf("create layer file: %w", err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	// A zero gzip.Header has no file name and a zero mtime, so nothing of
	// the build machine or the build time reaches the compressed bytes.
	zw, err := gzip.NewWriterLevel(bw, gzip.BestCompression)
	if err != nil {
		return nil, fmt.Errorf("create gzip writer: %w", err)
	}
	if err := fs.WriteTar(zw, mtime); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compress layer: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("write layer file: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write layer file: %w", err)
	}
	l, err := tarball.LayerFromFile(f.Name(), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("load layer: %w", err)
	}
	return l, nil
}

// Base builds the sandbox image from its root filesystem: one layer, and a
// config that runs node as the unprivileged sandbox user in /sandbox.
// created is both the config's creation time and every file's mtime.
func Base(fs *rootfs.FS, workDir string, created time.Time, labels map[string]string) (v1.Image, error) {
	layer, err := LayerFromFS(fs, workDir, created)
	if err != nil {
		return nil, err
	}
	cfg := &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Created:      v1.Time{Time: created.UTC()},
		Config: v1.Config{
			// tini runs node as its child; `--` ends tini's options.
			Entrypoint: []string{Init, "--", Node},
			User:       User,
			WorkingDir: WorkingDir,
			Env: []string{
				"PATH=/usr/local/bin",
				"SSL_CERT_FILE=" + CABundle,
			},
			Labels: labels,
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, fmt.Errorf("set image config: %w", err)
	}
	// OCI media types throughout: containerd imports them as they are and
	// keeps the manifest digest we print.
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: created.UTC()},
			CreatedBy: "sandpit-image: node, its shared libraries, CA certificates, users",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("append base layer: %w", err)
	}
	return img, nil
}

// AppendDir returns base with one more layer holding the tree under srcDir
// placed at dest (for example a directory of installed npm packages at
// /usr/local/lib/node_modules). The layer is built with the same
// normalisation as the base layer, so the variant is as reproducible as its
// inputs. createdBy is recorded in the image history.
func AppendDir(base v1.Image, srcDir, dest, workDir string, created time.Time, createdBy string) (v1.Image, error) {
	fs, err := rootfs.FromDir(srcDir, dest)
	if err != nil {
		return nil, err
	}
	layer, err := LayerFromFS(fs, workDir, created)
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: created.UTC()},
			CreatedBy: createdBy,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer from %s: %w", srcDir, err)
	}
	return img, nil
}
