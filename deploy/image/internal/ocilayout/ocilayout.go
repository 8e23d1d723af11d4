// Package ocilayout writes an image as an OCI image layout packed in a tar
// (oci-layout, index.json, blobs/sha256/...), the form `ctr images import`
// and containerd's client.Import accept while keeping the manifest, and so
// its digest, byte for byte. (A docker-archive tarball would make containerd
// synthesise a manifest of its own.)
//
// The tar itself is deterministic too (sorted, fixed mtime, root-owned), so
// the same image always gives the same file.
package ocilayout

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotations containerd and OCI tools read from the manifest descriptor in
// index.json.
const (
	AnnotationContainerdName = "io.containerd.image.name"
	AnnotationRefName        = "org.opencontainers.image.ref.name"
)

type blob struct {
	digest v1.Hash
	size   int64
	open   func() (io.ReadCloser, error)
}

// Write writes img as an OCI layout tar to w. annotations go on the
// manifest's descriptor in index.json.
func Write(w io.Writer, img v1.Image, annotations map[string]string) error {
	manifest, err := img.RawManifest()
	if err != nil {
		return fmt.Errorf("read manifest: %w", err)
	}
	mdigest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("digest manifest: %w", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return fmt.Errorf("read manifest media type: %w", err)
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cdigest, err := img.ConfigName()
	if err != nil {
		return fmt.Errorf("digest config: %w", err)
	}
	fromBytes := func(b []byte) func() (io.ReadCloser, error) {
		return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	blobs := map[string]blob{
		mdigest.Hex: {mdigest, int64(len(manifest)), fromBytes(manifest)},
		cdigest.Hex: {cdigest, int64(len(config)), fromBytes(config)},
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("read layers: %w", err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return fmt.Errorf("digest layer: %w", err)
		}
		size, err := l.Size()
		if err != nil {
			return fmt.Errorf("size layer: %w", err)
		}
		blobs[d.Hex] = blob{d, size, l.Compressed}
	}

	index := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType:   mt,
			Size:        int64(len(manifest)),
			Digest:      mdigest,
			Annotations: annotations,
			Platform:    &v1.Platform{OS: "linux", Architecture: "amd64"},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return fmt.Errorf("encode index.json: %w", err)
	}

	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0).UTC()
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch})
	}
	file := func(name string, size int64, open func() (io.ReadCloser, error)) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: epoch}); err != nil {
			return err
		}
		r, err := open()
		if err != nil {
			return err
		}
		defer r.Close()
		n, err := io.Copy(tw, r)
		if err != nil {
			return err
		}
		if n != size {
			return fmt.Errorf("%s: got %d bytes, want %d", name, n, size)
		}
		return nil
	}
	if err := dir("blobs/"); err != nil {
		return fmt.Errorf("write layout: %w", err)
	}
	if err := dir("blobs/sha256/"); err != nil {
		return fmt.Errorf("write layout: %w", err)
	}
	hexes := make([]string, 0, len(blobs))
	for h := range blobs {
		hexes = append(hexes, h)
	}
	sort.Strings(hexes)
	for _, h := range hexes {
		b := blobs[h]
		if err := file("blobs/sha256/"+h, b.size, b.open); err != nil {
			return fmt.Errorf("write blob %s: %w", b.digest, err)
		}
	}
	if err := file("index.json", int64(len(indexJSON)), fromBytes(indexJSON)); err != nil {
		return fmt.Errorf("write index.json: %w", err)
	}
	layout := []byte(`{"imageLayoutVersion":"1.0.0"}`)
	if err := file("oci-layout", int64(len(layout)), fromBytes(layout)); err != nil {
		return fmt.Errorf("write oci-layout: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("close layout tar: %w", err)
	}
	return nil
}
