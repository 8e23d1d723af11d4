package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Content returns img's manifest, config and layers as containerd's
// content store holds them, for reading without running anything (the
// image inspector). ctx bounds every read, the layers' included.
func (r *Runtime) Content(ctx context.Context, img Image) (v1.Image, error) {
	if img.image == nil {
		return nil, fmt.Errorf("image %s: not resolved", img.Ref)
	}
	ctx = r.ns(ctx)
	cs := img.image.ContentStore()
	desc, err := manifestOf(ctx, cs, img.image.Target())
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Ref, err)
	}
	raw, err := content.ReadBlob(ctx, cs, desc)
	if err != nil {
		return nil, fmt.Errorf("image %s: read manifest: %w", img.Ref, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("image %s: parse manifest: %w", img.Ref, err)
	}
	return partial.CompressedToImage(&storeImage{ctx: ctx, cs: cs, raw: raw, manifest: m, mediaType: desc.MediaType})
}

// manifestOf is the linux/amd64 manifest of target, an index or a
// manifest.
func manifestOf(ctx context.Context, cs content.Store, target ocispec.Descriptor) (ocispec.Descriptor, error) {
	if !images.IsIndexType(target.MediaType) {
		return target, nil
	}
	raw, err := content.ReadBlob(ctx, cs, target)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("read index: %w", err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("parse index: %w", err)
	}
	want := platforms.Only(platforms.MustParse("linux/amd64"))
	for _, d := range idx.Manifests {
		if images.IsManifestType(d.MediaType) && (d.Platform == nil || want.Match(*d.Platform)) {
			return d, nil
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("no linux/amd64 manifest in the index")
}

// storeImage is partial.CompressedImageCore over a content store.
type storeImage struct {
	ctx       context.Context
	cs        content.Store
	raw       []byte
	manifest  ocispec.Manifest
	mediaType string
}

func (s *storeImage) RawConfigFile() ([]byte, error) {
	return content.ReadBlob(s.ctx, s.cs, s.manifest.Config)
}

func (s *storeImage) MediaType() (types.MediaType, error) { return types.MediaType(s.mediaType), nil }

func (s *storeImage) RawManifest() ([]byte, error) { return s.raw, nil }

func (s *storeImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, l := range s.manifest.Layers {
		if l.Digest.String() == h.String() {
			return &storeLayer{s: s, desc: l}, nil
		}
	}
	return nil, fmt.Errorf("layer %s is not in the manifest", h)
}

type storeLayer struct {
	s    *storeImage
	desc ocispec.Descriptor
}

func (l *storeLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.desc.Digest.String()) }

func (l *storeLayer) Size() (int64, error) { return l.desc.Size, nil }

func (l *storeLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}

func (l *storeLayer) Compressed() (io.ReadCloser, error) {
	ra, err := l.s.cs.ReaderAt(l.s.ctx, l.desc)
	if err != nil {
		return nil, fmt.Errorf("read layer %s: %w", l.desc.Digest, err)
	}
	return readAtCloser{Reader: io.NewSectionReader(ra, 0, ra.Size()), Closer: ra}, nil
}

type readAtCloser struct {
	io.Reader
	io.Closer
}
