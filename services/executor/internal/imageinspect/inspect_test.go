package imageinspect_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/sandpit-run/sandpit/services/executor/internal/imageinspect"
	"github.com/sandpit-run/sandpit/services/executor/internal/imageinspect/inspecttest"
)

// TestDefaultImageHasNoForbiddenClass: the image every execution runs in
// holds node, and nothing of any other class; its node version is read
// from the binary and agrees with the label; /tmp is the one sticky
// world-writable directory.
func TestDefaultImageHasNoForbiddenClass(t *testing.T) {
	img, format, closer, err := imageinspect.Open(inspecttest.DefaultImage(t))
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	if format != imageinspect.FormatOCILayout {
		t.Errorf("format %q, want %q", format, imageinspect.FormatOCILayout)
	}
	r, err := imageinspect.Inspect(img)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Forbidden(nil); len(got) != 0 {
		t.Errorf("forbidden classes %v in the default image: %+v", got, r.Findings)
	}
	want := []imageinspect.Finding{{Class: imageinspect.ClassNode, Path: imageinspect.NodePath, Why: "name node"}}
	if !reflect.DeepEqual(r.Findings, want) {
		t.Errorf("findings %+v, want %+v", r.Findings, want)
	}
	if !r.Node.Present || len(r.Node.Versions) < 2 || r.Node.Versions[0].Source != "binary "+imageinspect.NodePath ||
		r.Node.Versions[0].Version != r.Node.Versions[1].Version || r.Node.Version == "" {
		t.Errorf("node %+v, want present with the binary's version first, agreeing with the label", r.Node)
	}
	if !reflect.DeepEqual(r.Sticky, []string{"/tmp"}) {
		t.Errorf("sticky %v, want [/tmp]", r.Sticky)
	}
}

// TestProfilesInspected: node-sdk holds no forbidden class; node-debug's
// shell (busybox, and sh linking to it) is listed, and forbidden unless
// allowed.
func TestProfilesInspected(t *testing.T) {
	inspect := func(env, name string) *imageinspect.Report {
		t.Helper()
		img, _, closer, err := imageinspect.Open(inspecttest.Archive(t, env, name))
		if err != nil {
			t.Fatal(err)
		}
		defer closer.Close()
		r, err := imageinspect.Inspect(img)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := inspect("SANDPIT_SDK_IMAGE_TAR", "sandpit-node-sdk.tar"); len(r.Forbidden(nil)) != 0 {
		t.Errorf("node-sdk: forbidden %v: %+v", r.Forbidden(nil), r.Findings)
	}
	r := inspect("SANDPIT_DEBUG_IMAGE_TAR", "sandpit-node-debug.tar")
	var shells []string
	for _, f := range r.Findings {
		if f.Class == imageinspect.ClassShell {
			shells = append(shells, f.Path)
		}
	}
	if !reflect.DeepEqual(shells, []string{"/usr/bin/busybox", "/usr/bin/sh"}) || !reflect.DeepEqual(r.Forbidden(nil), []imageinspect.Class{imageinspect.ClassShell}) {
		t.Errorf("node-debug: shells %v, forbidden %v; want busybox and sh, and shell", shells, r.Forbidden(nil))
	}
	if got := r.Forbidden([]imageinspect.Class{imageinspect.ClassShell}); len(got) != 0 {
		t.Errorf("node-debug with shell allowed: forbidden %v", got)
	}
}

// builtFindings is what the image inspecttest builds holds: everything
// but what its second layer deletes (perl, wget, ruby) and what nobody may
// execute (the bash completion named curl).
var builtFindings = []imageinspect.Finding{
	{Class: imageinspect.ClassNode, Path: "/usr/local/bin/node", Why: "name node"},
	{Class: imageinspect.ClassShell, Path: "/bin/busybox", Why: "name busybox"},
	{Class: imageinspect.ClassShell, Path: "/bin/sh", Why: "name sh (link to busybox)"},
	{Class: imageinspect.ClassShell, Path: "/usr/bin/bash", Why: "name bash (link to ../../../bin/busybox)"},
	{Class: imageinspect.ClassInterpreter, Path: "/usr/bin/python3", Why: "name python3"},
	{Class: imageinspect.ClassNetworkTool, Path: "/usr/bin/curl", Why: "name curl"},
	{Class: imageinspect.ClassSetuid, Path: "/usr/bin/su", Why: "mode 4755"},
	{Class: imageinspect.ClassSetgid, Path: "/usr/bin/wall", Why: "mode 2755"},
	{Class: imageinspect.ClassCapability, Path: "/usr/sbin/captool", Why: "xattr security.capability"},
	{Class: imageinspect.ClassWorldWritable, Path: "/var/drop", Why: "mode 0777"},
}

// TestBuiltImageListsEveryClass: each thing the built image holds is
// listed with its class and why (a link climbing above the root too);
// files the later layer deletes by a whiteout, an opaque whiteout or a
// file over their directory are not; and the same report comes from the
// image in memory, its OCI layout tar and its docker-archive.
func TestBuiltImageListsEveryClass(t *testing.T) {
	img := inspecttest.Image(t)
	want, err := imageinspect.Inspect(img)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(want.Findings, builtFindings) {
		t.Errorf("findings:\n%+v\nwant\n%+v", want.Findings, builtFindings)
	}
	if !reflect.DeepEqual(want.Sticky, []string{"/tmp"}) {
		t.Errorf("sticky %v, want [/tmp]", want.Sticky)
	}
	v := inspecttest.NodeVersion
	wantNode := imageinspect.Node{Present: true, Version: v, Versions: []imageinspect.NodeVersion{
		{Source: "binary /usr/local/bin/node", Version: v},
		{Source: "label run.sandpit.node.version", Version: v},
		{Source: "env NODE_VERSION", Version: v},
	}}
	if !reflect.DeepEqual(want.Node, wantNode) {
		t.Errorf("node %+v, want %+v", want.Node, wantNode)
	}
	all := []imageinspect.Class{imageinspect.ClassShell, imageinspect.ClassInterpreter, imageinspect.ClassNetworkTool,
		imageinspect.ClassSetuid, imageinspect.ClassSetgid, imageinspect.ClassCapability, imageinspect.ClassWorldWritable}
	if got := want.Forbidden(nil); !reflect.DeepEqual(got, all) {
		t.Errorf("forbidden %v, want %v", got, all)
	}
	if got := want.Forbidden(all[1:]); !reflect.DeepEqual(got, all[:1]) {
		t.Errorf("forbidden allowing %v: %v, want %v", all[1:], got, all[:1])
	}

	ociTar, dockerTar := inspecttest.Archives(t, img, t.TempDir())
	for _, tt := range []struct {
		path   string
		format imageinspect.Format
	}{{ociTar, imageinspect.FormatOCILayout}, {dockerTar, imageinspect.FormatDockerArchive}} {
		read, format, closer, err := imageinspect.Open(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := imageinspect.Inspect(read)
		closer.Close()
		if err != nil {
			t.Fatal(err)
		}
		if format != tt.format {
			t.Errorf("%s read as %q, want %q", tt.path, format, tt.format)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s (%s):\n%+v\nwant the in-memory image's\n%+v", tt.path, format, got, want)
		}
	}
}

// TestOpenRefusesWhatIsNoImage: a tar that is neither layout nor archive,
// and a file that is no tar, are errors.
func TestOpenRefusesWhatIsNoImage(t *testing.T) {
	dir := t.TempDir()
	for name, write := range map[string]func(*tar.Writer) error{
		"empty.tar": func(*tar.Writer) error { return nil },
		"other.tar": func(tw *tar.Writer) error {
			return tw.WriteHeader(&tar.Header{Name: "README", Typeflag: tar.TypeReg, Mode: 0o644})
		},
	} {
		p := inspecttest.WriteTar(t, dir, name, write)
		if _, _, _, err := imageinspect.Open(p); err == nil {
			t.Errorf("%s opened as an image", name)
		}
	}
	if _, _, _, err := imageinspect.Open(dir + "/absent.tar"); err == nil {
		t.Error("an absent file opened as an image")
	}
}

// TestTamperedBlobIsAnError: a layer blob of an OCI layout whose bytes are
// no longer those its digest names is a read error, not a report. The
// layer is stored uncompressed, so the changed bytes are still a valid
// tar and only the digest can tell.
func TestTamperedBlobIsAnError(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := "original content"
	if err := errors.Join(tw.WriteHeader(&tar.Header{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}),
		func() error { _, err := io.WriteString(tw, body); return err }(), tw.Close()); err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
	ociTar, _ := inspecttest.Archives(t, img, t.TempDir())
	inspectOCI := func() error {
		read, _, closer, err := imageinspect.Open(ociTar)
		if err != nil {
			return err
		}
		defer closer.Close()
		_, err = imageinspect.Inspect(read)
		return err
	}
	if err := inspectOCI(); err != nil {
		t.Fatalf("before tampering: %v", err)
	}
	b, err := os.ReadFile(ociTar)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(b, []byte(body)) != 1 {
		t.Fatalf("%q is not once in the archive", body)
	}
	if err := os.WriteFile(ociTar, bytes.Replace(b, []byte(body), []byte("tampered content"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := inspectOCI(); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Errorf("tampered layer: %v, want a digest mismatch", err)
	}
}
