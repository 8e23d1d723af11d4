// Package build is the sandbox image build from end to end: fetch and verify
// the pinned inputs, assemble the root filesystem, make the image, and write
// it as an OCI layout tar that containerd imports under a fixed name.
package build

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sandpit-run/sandpit/deploy/image/internal/image"
	"github.com/sandpit-run/sandpit/deploy/image/internal/inputs"
	"github.com/sandpit-run/sandpit/deploy/image/internal/ocilayout"
	"github.com/sandpit-run/sandpit/deploy/image/internal/pins"
	"github.com/sandpit-run/sandpit/deploy/image/internal/rootfs"
	"github.com/sandpit-run/sandpit/deploy/image/variants"
)

// DefaultName is the reference the executor expects the default image under.
const DefaultName = Repository + "/node:" + pins.DefaultNodeMajor

// Repository is where the images sandpit builds are named: PROFILE:MAJOR
// under it (sandpit.local/node-sdk:22).
const Repository = "sandpit.local"

// NameFor is the reference of profile built for Node.js release line major.
func NameFor(profile, major string) string { return Repository + "/" + profile + ":" + major }

// Options of one build.
type Options struct {
	// Out is the OCI layout tar to write.
	Out string
	// CacheDir holds downloaded inputs between builds.
	CacheDir string
	// Name is the image reference recorded in index.json; it must carry a
	// tag. Empty means DefaultName, or the variant's reference.
	Name string
	// Variant, if set, names a test variant (package variants): the
	// default image plus a layer of preinstalled npm packages.
	Variant string
	// NodeMajor is the Node.js release line (pins.Nodes); empty is
	// pins.DefaultNodeMajor.
	NodeMajor string
	// ProfileFile, instead of Variant, is an operator's profile
	// (variants.LoadProfile).
	ProfileFile string
	// Created is the image creation time and every file's mtime. Keep it
	// fixed (SOURCE_DATE_EPOCH) for reproducible output.
	Created time.Time
	Log     *slog.Logger
}

// Labels returns the image labels: the pinned versions, so `ctr images
// info` or an executor can tell what a digest contains.
func Labels(node pins.Node) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":   "sandpit-node",
		"org.opencontainers.image.version": node.Version,
		"run.sandpit.node.version":         node.Version,
	}
	for _, d := range pins.Debs {
		l["run.sandpit.debian."+d.Name] = d.Version
	}
	return l
}

// Image builds the sandbox image from already verified inputs. Files it
// needs while the image is read are put in workDir; keep it until the image
// has been written.
func Image(ctx context.Context, in *inputs.Set, workDir string, created time.Time) (v1.Image, error) {
	fs, err := rootfs.Assemble(ctx, in, workDir)
	if err != nil {
		return nil, fmt.Errorf("assemble rootfs: %w", err)
	}
	img, err := image.Base(fs, workDir, created, Labels(in.Node))
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	return img, nil
}

// Annotations returns the index.json annotations for reference ref: the
// full name containerd imports the image as, and the tag as the OCI ref
// name.
func Annotations(ref string) (map[string]string, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return nil, fmt.Errorf("parse image name %q: %w", ref, err)
	}
	// name.NewTag defaults the tag to "latest"; require it spelled out so
	// the name in containerd is exactly what the caller wrote.
	if !strings.HasSuffix(ref, ":"+tag.TagStr()) {
		return nil, fmt.Errorf("parse image name %q: needs an explicit tag", ref)
	}
	return map[string]string{
		ocilayout.AnnotationContainerdName: ref,
		ocilayout.AnnotationRefName:        tag.TagStr(),
	}, nil
}

// WriteLayout writes img as an OCI layout tar at out (atomically: a failed
// build never leaves a half-written file under the final name).
func WriteLayout(img v1.Image, out, ref string) error {
	ann, err := Annotations(ref)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("create output dir: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(out), ".sandpit-image-*.tar")
	if err != nil {
		return fmt.Errorf("create output: %w", err)
	}
	defer os.Remove(f.Name())
	if err := ocilayout.Write(f, img, ann); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := os.Rename(f.Name(), out); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}

// Run fetches the inputs, builds the image, writes it to opts.Out and
// returns its manifest digest.
func Run(ctx context.Context, opts Options) (v1.Hash, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var variant *variants.Variant
	var err error
	switch {
	case opts.Variant != "" && opts.ProfileFile != "":
		return v1.Hash{}, fmt.Errorf("a variant or a profile file, not both")
	case opts.Variant != "":
		variant, err = variants.Get(opts.Variant)
	case opts.ProfileFile != "":
		variant, err = variants.LoadProfile(opts.ProfileFile)
	}
	if err != nil {
		return v1.Hash{}, err
	}
	major := opts.NodeMajor
	if major == "" {
		major = pins.DefaultNodeMajor
	}
	node, ok := pins.NodeByMajor(major)
	if !ok {
		return v1.Hash{}, fmt.Errorf("no pinned Node.js %s (have %v)", major, pins.NodeMajors())
	}
	ref := opts.Name
	if ref == "" {
		ref = NameFor("node", major)
		if variant != nil {
			ref = NameFor(variant.Profile, major)
		}
	}
	if _, err := Annotations(ref); err != nil {
		return v1.Hash{}, err
	}
	f := &inputs.Fetcher{Dir: opts.CacheDir, Node: node, Log: log}
	in, err := f.Fetch(ctx)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("fetch inputs: %w", err)
	}
	work, err := os.MkdirTemp("", "sandpit-image-")
	if err != nil {
		return v1.Hash{}, fmt.Errorf("create work dir: %w", err)
	}
	defer os.RemoveAll(work)
	log.Info("building image", "node", node.Version)
	img, err := Image(ctx, in, work, opts.Created)
	if err != nil {
		return v1.Hash{}, err
	}
	if variant != nil && variant.Shell {
		if img, err = DebugImage(ctx, img, variant, f, work, opts.Created); err != nil {
			return v1.Hash{}, err
		}
	} else if variant != nil && variant.PackageLock != nil {
		modules, err := InstallVariant(ctx, variant, opts.CacheDir, log)
		if err != nil {
			return v1.Hash{}, err
		}
		if img, err = VariantImage(img, variant, modules, work, opts.Created); err != nil {
			return v1.Hash{}, err
		}
	}
	if variant != nil && len(variant.Files) > 0 {
		if img, err = FilesImage(img, variant, work, opts.Created); err != nil {
			return v1.Hash{}, err
		}
	}
	if err := WriteLayout(img, opts.Out, ref); err != nil {
		return v1.Hash{}, err
	}
	d, err := img.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("digest image: %w", err)
	}
	log.Info("wrote image", "out", opts.Out, "name", ref, "digest", d.String())
	return d, nil
}
