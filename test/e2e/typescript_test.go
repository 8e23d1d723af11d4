package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// TypeScript programs, each printing what it did and node's flags
// (process.execArgv), so that a run shows whether the executor added the
// type-stripping flag.
const (
	tsAnnotated = `interface Point { x: number; y: number }
function norm(p: Point): number { return Math.hypot(p.x, p.y); }
const p: Point = { x: 3, y: 4 };
console.log("ts", norm(p), process.version, JSON.stringify(process.execArgv));
`
	tsModule = `import type { Stats } from "node:fs";
import { twice } from "./lib/twice.mts";
let st: Stats | undefined;
const n: number = await Promise.resolve(21);
console.log("mts", twice(n), st === undefined, typeof require);
`
	tsModuleLib = `export function twice(n: number): number { return n * 2; }
`
	tsCommonJS = `const os: typeof import("node:os") = require("node:os");
const kind: string = typeof os.cpus;
console.log("cts", kind, typeof module);
`
	tsEnum = `enum Colour { Red, Green }
console.log("never", Colour.Red);
`
)

// tsCase is one TypeScript request and what it prints.
type tsCase struct {
	name   string
	req    *executorv1.ExecuteRequest
	stdout string // a prefix of stdout
}

// tsCases are the programs both node versions run alike.
func tsCases(image string) []tsCase {
	return []tsCase{
		{".ts with an interface and annotations", &executorv1.ExecuteRequest{Image: image, Code: tsAnnotated, Entrypoint: "main.ts"}, "ts 5 v"},
		{".mts with import type, a .mts import and top-level await", &executorv1.ExecuteRequest{Image: image, Entrypoint: "main.mts", Files: []*executorv1.File{
			{Path: "main.mts", Content: []byte(tsModule)},
			{Path: "lib/twice.mts", Content: []byte(tsModuleLib)},
		}}, "mts 42 true undefined\n"},
		{".cts with require", &executorv1.ExecuteRequest{Image: image, Code: tsCommonJS, Entrypoint: "src/main.cts"}, "cts function object\n"},
	}
}

// runTypeScript runs the cases on image with a node of version prefix
// major ("v24."), and checks that each printed what it should, exited 0
// and wrote nothing to stderr (no ExperimentalWarning, no flag complaint),
// that node ran without the type-stripping flag (neither version needs
// it), and that an enum, which type stripping does not support, ends with
// node's own error on stderr and node's exit code.
func runTypeScript(t *testing.T, e *executor, image, major string) {
	for _, tt := range tsCases(image) {
		t.Run(tt.name, func(t *testing.T) {
			r := e.mustRun(t, tt.req)
			out := string(r.stdout)
			if !strings.HasPrefix(out, tt.stdout) || r.result.GetExitCode() != 0 || len(r.stderr) != 0 {
				t.Errorf("stdout %q exit %d stderr %q, want stdout from %q, exit 0, no stderr", out, r.result.GetExitCode(), r.stderr, tt.stdout)
			}
			if strings.HasPrefix(out, "ts ") && !strings.HasPrefix(out, "ts 5 "+major) || strings.Contains(out, "strip-types") {
				t.Errorf("stdout %q: want node %s, run without --experimental-strip-types", out, major)
			}
		})
	}
	t.Run("enum: node's error, unchanged", func(t *testing.T) {
		r := e.mustRun(t, &executorv1.ExecuteRequest{Image: image, Code: tsEnum, Entrypoint: "main.ts"})
		stderr := string(r.stderr)
		for _, want := range []string{
			"/sandbox/main.ts:1\nenum Colour { Red, Green }\n^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
			"SyntaxError [ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX]: TypeScript enum is not supported in strip-only mode\n",
			"code: 'ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX'\n}\n\nNode.js " + major,
		} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, stderr)
			}
		}
		res := r.result
		if res.GetExitCode() != 1 || res.GetTermination() != executorv1.Termination_TERMINATION_EXITED || len(r.stdout) != 0 {
			t.Errorf("result %v stdout %q, want node's exit 1, EXITED, no stdout", res, r.stdout)
		}
	})
}

// TestTypeScriptEntrypoints runs .ts, .mts and .cts entrypoints on the
// default image (Node 24).
func TestTypeScriptEntrypoints(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	runTypeScript(t, e, "", "v24.")
}

// TestTypeScriptOnNode22 runs the same programs on the Node 22 image (the
// harness imports it: SANDPIT_IMAGE22_TAR, default build/sandpit-node-22.tar,
// which make images builds).
func TestTypeScriptOnNode22(t *testing.T) {
	e := startExecutor(t, executorOpts{allow: []string{node22}})
	runTypeScript(t, e, node22, "v22.")
}

// TestTypeScriptFlagFollowsImageLabel: the executor decides on the
// type-stripping flag by the node version the image's config label names.
// The default image relabelled as Node 22.12 (a release that has type
// stripping behind the flag) runs a .ts entrypoint with
// --experimental-strip-types, which its real Node 24 accepts silently, and
// a .js one without; the default image, labelled 24.21.0, runs .ts without
// (TestTypeScriptEntrypoints).
func TestTypeScriptFlagFollowsImageLabel(t *testing.T) {
	const ref = "sandpit.local/node-labelled:22.12"
	relabel(t, env.ImageRef, ref, "run.sandpit.node.version", "22.12.0")
	e := startExecutor(t, executorOpts{allow: []string{ref}})
	tests := []struct {
		entrypoint, want string
	}{
		{"main.ts", `ts 5 v24.21.0 ["--experimental-strip-types"]` + "\n"},
		{"main.js", `ts 5 v24.21.0 []` + "\n"},
	}
	for _, tt := range tests {
		src := tsAnnotated
		if tt.entrypoint == "main.js" {
			src = `console.log("ts", Math.hypot(3, 4), process.version, JSON.stringify(process.execArgv))`
		}
		r := e.mustRun(t, &executorv1.ExecuteRequest{Image: ref, Code: src, Entrypoint: tt.entrypoint})
		if got := string(r.stdout); got != tt.want || r.result.GetExitCode() != 0 || len(r.stderr) != 0 {
			t.Errorf("%s: stdout %q exit %d stderr %q, want %q, exit 0, no stderr", tt.entrypoint, got, r.result.GetExitCode(), r.stderr, tt.want)
		}
	}
}

// relabel stores image from once more as to, with the config label key set
// to value: the same layers under a new config and manifest, written to
// the shared containerd under a lease and removed when the test ends.
func relabel(t *testing.T, from, to, key, value string) {
	t.Helper()
	c, err := env.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), containerdtest.Namespace)
	ctx, done, err := c.WithLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = done(context.WithoutCancel(ctx)) }()
	img, err := c.GetImage(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	cs := c.ContentStore()
	m, err := images.Manifest(ctx, cs, img.Target(), img.Platform())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := content.ReadBlob(ctx, cs, m.Config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Config.Labels[key] = value
	m.Config = writeJSON(ctx, t, cs, m.Config.MediaType, cfg, nil)
	// The manifest's references keep its config and layers from the
	// garbage collector once the lease ends.
	refs := map[string]string{"containerd.io/gc.ref.content.config": m.Config.Digest.String()}
	for i, l := range m.Layers {
		refs[fmt.Sprintf("containerd.io/gc.ref.content.l.%d", i)] = l.Digest.String()
	}
	target := writeJSON(ctx, t, cs, ocispec.MediaTypeImageManifest, m, refs)
	is := c.ImageService()
	if _, err := is.Create(ctx, images.Image{Name: to, Target: target}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := env.Client()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		if err := c.ImageService().Delete(namespaces.WithNamespace(context.Background(), containerdtest.Namespace), to); err != nil {
			t.Errorf("remove image %s: %v", to, err)
		}
	})
}

// writeJSON stores v in cs as a blob of mediaType and returns its
// descriptor.
func writeJSON(ctx context.Context, t *testing.T, cs content.Store, mediaType string, v any, labels map[string]string) ocispec.Descriptor {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	if err := content.WriteBlob(ctx, cs, desc.Digest.String(), bytes.NewReader(b), desc, content.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}
	return desc
}
