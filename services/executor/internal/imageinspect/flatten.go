package imageinspect

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Whiteout names (OCI image spec, "Whiteouts"): .wh.NAME deletes NAME of
// the layers below; .wh..wh..opq in a directory deletes what the layers
// below have in it.
const (
	whiteoutPrefix = ".wh."
	opaqueWhiteout = ".wh..wh..opq"
)

// file is one entry of the image's file system and, for node, the version
// its bytes carry.
type file struct {
	hdr         *tar.Header
	nodeVersion string
}

// flatten applies img's layers in order, as a snapshotter would, and
// returns the file system they make, by absolute path. It is written here,
// rather than read from mutate.Extract, because Extract drops relative
// links whose target climbs above the root (bin/sh -> ../../bin/busybox),
// which work in a container all the same.
func flatten(img v1.Image) (map[string]*file, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("read image layers: %w", err)
	}
	files := map[string]*file{}
	for i, l := range layers {
		if err := applyLayer(files, l); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return files, nil
}

func applyLayer(files map[string]*file, l v1.Layer) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	// Whiteouts delete from the layers below only, so the layer is read
	// whole before anything is applied.
	var opaque, deleted []string
	added := map[string]*file{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		p := imagePath(hdr.Name)
		base := path.Base(p)
		switch {
		case base == opaqueWhiteout:
			opaque = append(opaque, path.Dir(p))
			continue
		case strings.HasPrefix(base, whiteoutPrefix):
			deleted = append(deleted, path.Join(path.Dir(p), strings.TrimPrefix(base, whiteoutPrefix)))
			continue
		}
		f := &file{hdr: hdr}
		if p == NodePath && hdr.Typeflag == tar.TypeReg {
			if f.nodeVersion, err = scanNodeVersion(tr); err != nil {
				return fmt.Errorf("read %s: %w", p, err)
			}
		}
		added[p] = f // a later entry of the same path wins, as on extraction
	}
	// Read to the end, so a verifying reader sees all of the blob.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return err
	}
	for _, d := range opaque {
		removeUnder(files, d)
	}
	for _, p := range deleted {
		removeTree(files, p)
	}
	for _, p := range sortedKeys(added) {
		// A non-directory over a directory hides what was in it.
		if added[p].hdr.Typeflag != tar.TypeDir {
			removeTree(files, p)
		}
		files[p] = added[p]
	}
	return nil
}

// removeTree deletes p and, when it is a directory, what is in it.
func removeTree(files map[string]*file, p string) {
	if f, ok := files[p]; ok && f.hdr.Typeflag == tar.TypeDir {
		removeUnder(files, p)
	}
	delete(files, p)
}

// removeUnder deletes what is in directory d, not d itself.
func removeUnder(files map[string]*file, d string) {
	prefix := strings.TrimSuffix(d, "/") + "/"
	for p := range files {
		if strings.HasPrefix(p, prefix) {
			delete(files, p)
		}
	}
}

func sortedKeys(m map[string]*file) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
