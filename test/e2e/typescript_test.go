package e2e

import (
	"context"
	"os"
	"strings"
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
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

// image22 is the name the Node 22 image is imported under.
const image22 = "sandpit.local/node:22"

// TestTypeScriptOnNode22 runs the same programs on the Node 22 image, given
// as an archive in SANDPIT_IMAGE22_TAR; without it the test is skipped.
func TestTypeScriptOnNode22(t *testing.T) {
	tar := os.Getenv("SANDPIT_IMAGE22_TAR")
	if tar == "" {
		t.Skip("SANDPIT_IMAGE22_TAR is not set: no Node 22 image to run on")
	}
	if err := env.ImportImage(context.Background(), tar, image22); err != nil {
		t.Fatal(err)
	}
	e := startExecutor(t, executorOpts{allow: []string{image22}})
	runTypeScript(t, e, image22, "v22.")
}
