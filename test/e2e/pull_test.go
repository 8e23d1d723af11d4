package e2e

import (
	"archive/tar"
	"errors"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// layoutImage reads the first image of an OCI layout tar.
func layoutImage(t *testing.T, tarPath string) v1.Image {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, tr); err != nil {
			t.Fatal(err)
		}
		out.Close()
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil || len(m.Manifests) == 0 {
		t.Fatalf("index: %v %v", m, err)
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestAllowedImageIsPulled: an allowed reference that is not in containerd
// is pulled from its registry (one of the test's own, on loopback) and
// runs; one the registry does not have, or on a registry that does not
// answer, is UNAVAILABLE with IMAGE_PULL_FAILED, and nothing runs.
func TestAllowedImageIsPulled(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	tarPath, err := containerdtest.Artifact("SANDPIT_IMAGE_TAR", "build/sandpit-node.tar")
	if err != nil {
		t.Fatal(err)
	}
	img := layoutImage(t, tarPath)
	ref := host + "/acme/node:1"
	tag, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := closed.Addr().String() + "/acme/node:1"
	closed.Close()
	absent := host + "/acme/absent:1"

	e := startExecutor(t, executorOpts{allow: []string{ref, absent, gone}})
	r := e.mustRun(t, &executorv1.ExecuteRequest{Image: ref, Code: "console.log(process.version)"})
	if strings.TrimSpace(string(r.stdout)) != "v24.21.0" || r.started.GetImageDigest() != digest.String() {
		t.Errorf("pulled image: printed %q, digest %s; want v24.21.0 and %s", r.stdout, r.started.GetImageDigest(), digest)
	}
	for _, bad := range []string{absent, gone} {
		r := e.execute(t.Context(), &executorv1.ExecuteRequest{Image: bad, Code: "1"})
		if status.Code(r.err) != codes.Unavailable || !strings.Contains(r.err.Error(), "could not be pulled") || r.started != nil {
			t.Errorf("%s: %v, want UNAVAILABLE IMAGE_PULL_FAILED before anything ran", bad, r.err)
		}
	}
}
