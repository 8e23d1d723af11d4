//go:build integration

package build

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sandpit-run/sandpit/deploy/image/variants"
)

var (
	variantOnce   sync.Once
	variantTar    string
	variantDigest v1.Hash
	variantErr    error
)

func sdkVariant(t *testing.T) *variants.Variant {
	t.Helper()
	v, err := variants.Get("sdk")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// builtVariant returns the OCI layout tar of the sdk variant, built once
// per test binary with the default name.
func builtVariant(t *testing.T) (string, v1.Hash) {
	t.Helper()
	variantOnce.Do(func() {
		variantTar = filepath.Join(testDir, "variant-sdk.tar")
		variantDigest, variantErr = Run(context.Background(), Options{
			Out:      variantTar,
			CacheDir: cacheDir(t),
			Variant:  "sdk",
			Created:  time.Unix(0, 0),
		})
	})
	if variantErr != nil {
		t.Fatalf("build variant: %v", variantErr)
	}
	return variantTar, variantDigest
}

func TestVariantReproducible(t *testing.T) {
	first, d1 := builtVariant(t)

	t.Run("cached rebuild needs no npm", func(t *testing.T) {
		// With every input cached the build runs dpkg-deb and nothing
		// else: no npm, so no registry is consulted.
		dpkg, err := exec.LookPath("dpkg-deb")
		if err != nil {
			skipUnlessCI(t, "dpkg-deb not found")
		}
		bin := t.TempDir()
		if err := os.Symlink(dpkg, filepath.Join(bin, "dpkg-deb")); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", bin)
		second := filepath.Join(t.TempDir(), "again.tar")
		d2, err := Run(context.Background(), Options{
			Out:      second,
			CacheDir: cacheDir(t),
			Variant:  "sdk",
			Created:  time.Unix(0, 0),
		})
		if err != nil {
			t.Fatalf("cached rebuild: %v", err)
		}
		if d1 != d2 {
			t.Fatalf("variant digests differ between identical builds: %s vs %s", d1, d2)
		}
		if a, b := fileSHA(t, first), fileSHA(t, second); a != b {
			t.Fatalf("variant OCI layout tars differ: %s vs %s", a, b)
		}
	})

	t.Run("fresh npm ci", func(t *testing.T) {
		// A new npm ci into an empty cache gives the same layer: the
		// cache is a shortcut, not a source of the content.
		if _, err := exec.LookPath("npm"); err != nil {
			skipUnlessCI(t, "npm not found")
		}
		v := sdkVariant(t)
		modules, err := InstallVariant(context.Background(), v, t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		baseTar, _ := built(t)
		base, _ := loadLayout(t, baseTar)
		img, err := VariantImage(base, v, modules, t.TempDir(), time.Unix(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if d != d1 {
			t.Fatalf("fresh npm ci gave %s, cached build %s", d, d1)
		}
	})
	t.Logf("variant digest %s", d1)
}

func TestVariantManifestAndConfig(t *testing.T) {
	v := sdkVariant(t)
	tarPath, digest := builtVariant(t)
	img, desc := loadLayout(t, tarPath)
	if desc.Digest != digest {
		t.Errorf("index.json digest %s, builder printed %s", desc.Digest, digest)
	}
	if got := desc.Annotations["io.containerd.image.name"]; got != "sandpit.local/node-sdk:24" {
		t.Errorf("io.containerd.image.name = %q", got)
	}
	if got := desc.Annotations["org.opencontainers.image.ref.name"]; got != "24" {
		t.Errorf("org.opencontainers.image.ref.name = %q", got)
	}

	baseTar, _ := built(t)
	base, _ := loadLayout(t, baseTar)
	baseLayers, err := base.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != len(baseLayers)+1 {
		t.Fatalf("variant has %d layers, want the base's %d plus one", len(layers), len(baseLayers))
	}
	for i, bl := range baseLayers {
		want, _ := bl.Digest()
		got, _ := layers[i].Digest()
		if got != want {
			t.Errorf("layer %d digest %s, base image has %s", i, got, want)
		}
	}

	bcf, err := base.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c, bc := cf.Config, bcf.Config
	checks := []struct {
		name      string
		got, want any
	}{
		{"entrypoint", strings.Join(c.Entrypoint, " "), strings.Join(bc.Entrypoint, " ")},
		{"user", c.User, bc.User},
		{"workdir", c.WorkingDir, bc.WorkingDir},
		{"env", strings.Join(c.Env, " "), strings.Join(bc.Env, " ")},
		{"created", cf.Created.Unix(), int64(0)},
		{"title label", c.Labels["org.opencontainers.image.title"], "sandpit-node-sdk"},
		{"variant label", c.Labels["run.sandpit.variant"], "sdk"},
		{"node label", c.Labels["run.sandpit.node.version"], bc.Labels["run.sandpit.node.version"]},
		{"history", len(cf.History), len(bcf.History) + 1},
	}
	for name, version := range v.Packages {
		checks = append(checks, struct {
			name      string
			got, want any
		}{name + " label", c.Labels["run.sandpit.npm."+name], version})
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

// variantAllowed is what the sdk variant adds to the allowed files: npm
// package files under /node_modules (violationsAllowing still rejects
// executables, native addons and forbidden names among them).
var variantAllowed = []*regexp.Regexp{regexp.MustCompile(`^node_modules/[^/]+/`)}

func TestVariantContents(t *testing.T) {
	v := sdkVariant(t)
	tarPath, _ := builtVariant(t)
	img, _ := loadLayout(t, tarPath)
	files := flatten(t, img)
	for _, bad := range violationsAllowing(files, variantAllowed) {
		t.Error(bad)
	}
	for name, version := range v.Packages {
		e, ok := files["node_modules/"+name+"/package.json"]
		if !ok {
			t.Errorf("node_modules/%s/package.json missing", name)
			continue
		}
		var pj struct{ Name, Version string }
		if err := json.Unmarshal(e.data, &pj); err != nil {
			t.Errorf("node_modules/%s/package.json: %v", name, err)
			continue
		}
		if pj.Name != name || pj.Version != version {
			t.Errorf("node_modules/%s is %s@%s, pinned %s", name, pj.Name, pj.Version, version)
		}
	}
	n := 0
	for p, e := range files {
		if !strings.HasPrefix(p, "node_modules") {
			continue
		}
		n++
		if p == "node_modules" {
			if e.hdr.Typeflag != tar.TypeDir || e.hdr.Mode != 0o755 {
				t.Errorf("node_modules: type %q mode %o, want a 755 directory", e.hdr.Typeflag, e.hdr.Mode)
			}
			continue
		}
		switch {
		case strings.Contains(p, "/.bin"), strings.HasSuffix(p, ".package-lock.json"):
			t.Errorf("%s: npm bookkeeping left in the image", p)
		case e.hdr.Typeflag == tar.TypeReg && e.hdr.Mode != 0o644:
			t.Errorf("%s: mode %o, want 644", p, e.hdr.Mode)
		case e.hdr.Typeflag == tar.TypeDir && e.hdr.Mode != 0o755:
			t.Errorf("%s: mode %o, want 755", p, e.hdr.Mode)
		case e.hdr.Typeflag != tar.TypeReg && e.hdr.Typeflag != tar.TypeDir:
			t.Errorf("%s: type %q, want only files and directories", p, e.hdr.Typeflag)
		}
	}
	// Everything outside node_modules is exactly the base image.
	baseTar, _ := built(t)
	base, _ := loadLayout(t, baseTar)
	baseFiles := flatten(t, base)
	if got, want := len(files)-n, len(baseFiles); got != want {
		t.Errorf("variant has %d paths outside node_modules, base image %d", got, want)
	}
	t.Logf("%d paths under node_modules", n)
}

// TestVariantSDKsRunFromRootfs runs the image's node in a chroot of the
// variant's rootfs as the sandbox user, with neither NODE_PATH nor anything
// of the host, and has it load stripe and axios with require() from a .cjs
// file and with import from a .mjs file under /sandbox, then make a request
// with each to a local HTTP server (the chroot shares the host's network).
func TestVariantSDKsRunFromRootfs(t *testing.T) {
	if os.Geteuid() != 0 {
		skipUnlessCI(t, "chroot needs root")
	}
	v := sdkVariant(t)
	tarPath, _ := builtVariant(t)
	img, _ := loadLayout(t, tarPath)
	dir := extractRootfs(t, img)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/products", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer sk_test_123" {
			http.Error(w, `{"error":{"type":"invalid_request_error","message":"bad key"}}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"object":"list","url":"/v1/products","has_more":false,"data":[{"id":"prod_test","object":"product","name":"T-shirt"}]}`)
	})
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"pong":true}`)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	body := fmt.Sprintf(`
const stripe = new Stripe("sk_test_123", { host: "127.0.0.1", port: %d, protocol: "http", maxNetworkRetries: 0, telemetry: false });
const products = await stripe.products.list();
const pong = await axios.get("http://127.0.0.1:%d/ping");
console.log(JSON.stringify({ stripe: Stripe.PACKAGE_VERSION, axios: axios.VERSION, from: FROM, product: products.data[0].id, pong: pong.data.pong }));
`, port, port)
	scripts := map[string]string{
		"require.cjs": `const Stripe = require("stripe");
const axios = require("axios");
const FROM = [require.resolve("stripe"), require.resolve("axios")].every((p) => p.startsWith("/node_modules/"));
(async () => {` + body + `})().catch((e) => { console.error(e); process.exit(1); });
`,
		"import.mjs": `import Stripe from "stripe";
import axios from "axios";
const FROM = [import.meta.resolve("stripe"), import.meta.resolve("axios")].every((u) => u.startsWith("file:///node_modules/"));
` + body,
	}
	want := fmt.Sprintf(`{"stripe":%q,"axios":%q,"from":true,"product":"prod_test","pong":true}`, v.Packages["stripe"], v.Packages["axios"])
	for name, src := range scripts {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, "sandbox", name), []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("/usr/local/bin/node", "/sandbox/"+name)
			cmd.Dir = "/"
			cmd.Env = []string{"PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "HOME=/home/sandbox"}
			cmd.SysProcAttr = &syscall.SysProcAttr{
				Chroot:     dir,
				Credential: &syscall.Credential{Uid: 65532, Gid: 65532},
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("node /sandbox/%s in chroot: %v\n%s", name, err, out)
			}
			if got := strings.TrimSpace(string(out)); got != want {
				t.Fatalf("node /sandbox/%s printed %q, want %q", name, got, want)
			}
		})
	}
}
