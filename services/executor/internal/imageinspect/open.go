package imageinspect

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"runtime"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Format is the kind of archive an image was read from.
type Format string

// The archive formats Open reads.
const (
	// FormatOCILayout is an OCI image layout (oci-layout, index.json,
	// blobs/) in a tar: what deploy/image writes.
	FormatOCILayout Format = "oci-layout"
	// FormatDockerArchive is what docker save writes (manifest.json and
	// the layers).
	FormatDockerArchive Format = "docker-archive"
)

// Open reads the image in the tar at name, an OCI image layout or a
// docker-archive, whichever its top-level files say it is. A tar holding
// both (docker save since Docker 25) is read as the OCI layout. The
// caller closes the returned closer when done with the image.
func Open(name string) (v1.Image, Format, io.Closer, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, "", nil, err
	}
	blobs, err := indexTar(f)
	if err != nil {
		f.Close()
		return nil, "", nil, fmt.Errorf("read %s: %w", name, err)
	}
	_, layout := blobs["oci-layout"]
	_, index := blobs["index.json"]
	_, manifest := blobs["manifest.json"]
	switch {
	case layout && index:
		img, err := ociImage(&ociTar{f: f, files: blobs})
		if err != nil {
			f.Close()
			return nil, "", nil, fmt.Errorf("%s: OCI layout: %w", name, err)
		}
		return img, FormatOCILayout, f, nil
	case manifest:
		f.Close()
		img, err := tarball.ImageFromPath(name, nil)
		if err != nil {
			return nil, "", nil, fmt.Errorf("%s: docker-archive: %w", name, err)
		}
		return img, FormatDockerArchive, io.NopCloser(nil), nil
	default:
		f.Close()
		return nil, "", nil, fmt.Errorf("%s is neither an OCI image layout tar (oci-layout, index.json) nor a docker-archive (manifest.json)", name)
	}
}

// span is where a file's bytes lie in the tar.
type span struct{ off, size int64 }

// indexTar returns where each regular file of the tar is, by cleaned name.
func indexTar(f *os.File) (map[string]span, error) {
	files := map[string]span{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		// archive/tar reads a header's blocks and no further, so the
		// file's offset is where its data starts.
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		files[path.Clean(hdr.Name)] = span{off, hdr.Size}
	}
}

// ociTar reads blobs of an OCI layout in a tar in place.
type ociTar struct {
	f     *os.File
	files map[string]span
}

func (o *ociTar) open(name string) (io.ReadCloser, error) {
	s, ok := o.files[name]
	if !ok {
		return nil, fmt.Errorf("no %s in the archive", name)
	}
	return io.NopCloser(io.NewSectionReader(o.f, s.off, s.size)), nil
}

// openBlob opens the blob h names; reading it to its end fails when its
// bytes are not h's, so what is inspected is what containerd would
// import.
func (o *ociTar) openBlob(h v1.Hash) (io.ReadCloser, error) {
	if h.Algorithm != "sha256" {
		return nil, fmt.Errorf("blob %s: only sha256 digests are read", h)
	}
	rc, err := o.open(path.Join("blobs", h.Algorithm, h.Hex))
	if err != nil {
		return nil, err
	}
	return &verified{ReadCloser: rc, want: h, h: sha256.New()}, nil
}

func (o *ociTar) readBlob(h v1.Hash) ([]byte, error) {
	rc, err := o.openBlob(h)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// verified hashes what is read through it and fails at the end when the
// sum is not want.
type verified struct {
	io.ReadCloser
	want v1.Hash
	h    hash.Hash
}

func (v *verified) Read(p []byte) (int, error) {
	n, err := v.ReadCloser.Read(p)
	v.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.Hex {
			return n, fmt.Errorf("blob %s: its content's digest is sha256:%s", v.want, got)
		}
	}
	return n, err
}

// ociImage picks the layout's one image: the only image manifest its index
// (and the indexes it names) lists, else the only one for linux and this
// machine's architecture.
func ociImage(o *ociTar) (v1.Image, error) {
	var found []v1.Descriptor
	var walk func(raw []byte, depth int) error
	walk = func(raw []byte, depth int) error {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return fmt.Errorf("image index: %w", err)
		}
		for _, d := range idx.Manifests {
			switch {
			case d.MediaType.IsImage():
				found = append(found, d)
			case d.MediaType.IsIndex() && depth < 4:
				raw, err := o.readBlob(d.Digest)
				if err == nil {
					err = walk(raw, depth+1)
				}
				if err != nil {
					return err
				}
			}
		}
		return nil
	}
	rc, err := o.open("index.json")
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(rc)
	if err == nil {
		err = walk(raw, 0)
	}
	if err != nil {
		return nil, err
	}
	if len(found) > 1 {
		var here []v1.Descriptor
		for _, d := range found {
			if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == runtime.GOARCH {
				here = append(here, d)
			}
		}
		found = here
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%d image manifests for linux/%s in the layout, want one", len(found), runtime.GOARCH)
	}
	raw, err = o.readBlob(found[0].Digest)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&ociCore{o: o, raw: raw, mediaType: found[0].MediaType})
}

// ociCore is the image partial.CompressedToImage completes.
type ociCore struct {
	o         *ociTar
	raw       []byte
	mediaType types.MediaType
}

func (c *ociCore) RawManifest() ([]byte, error)        { return c.raw, nil }
func (c *ociCore) MediaType() (types.MediaType, error) { return c.mediaType, nil }

func (c *ociCore) manifest() (*v1.Manifest, error) {
	var m v1.Manifest
	if err := json.Unmarshal(c.raw, &m); err != nil {
		return nil, fmt.Errorf("image manifest: %w", err)
	}
	return &m, nil
}

func (c *ociCore) RawConfigFile() ([]byte, error) {
	m, err := c.manifest()
	if err != nil {
		return nil, err
	}
	return c.o.readBlob(m.Config.Digest)
}

func (c *ociCore) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	m, err := c.manifest()
	if err != nil {
		return nil, err
	}
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if d.Digest == h {
			return &ociLayer{o: c.o, desc: d}, nil
		}
	}
	return nil, fmt.Errorf("blob %s is not in the manifest", h)
}

// ociLayer is one blob of the layout.
type ociLayer struct {
	o    *ociTar
	desc v1.Descriptor
}

func (l *ociLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *ociLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *ociLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }
func (l *ociLayer) Compressed() (io.ReadCloser, error) {
	return l.o.openBlob(l.desc.Digest)
}
