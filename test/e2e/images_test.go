package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// defaultAllowlist is the executor's --image-allowlist default
// (config.DefaultImageAllowlist), which the harness replaces by the test's.
var defaultAllowlist = []string{"sandpit.local/node:*", "sandpit.local/node-sdk:*"}

// sdkPackages are node-sdk's packages, loaded with require or, for the
// ES-only node-fetch, import.
var sdkPackages = []string{"@anthropic-ai/sdk", "@aws-sdk/client-s3", "axios", "dayjs", "lodash", "moment", "openai", "stripe", "uuid", "zod"}

// profileProbe reports node's version, what loads, and what can be
// spawned: only node itself, in every profile but node-debug.
const profileProbe = `
const { spawnSync, execSync } = require("child_process");
const out = { version: process.version, loaded: {}, spawn: {} };
for (const p of JSON.parse(process.argv[2])) {
  try { require(p); out.loaded[p] = "ok"; } catch (e) { out.loaded[p] = e.code || e.message; }
}
for (const bin of ["sh", "python3", "curl"]) {
  const r = spawnSync(bin, ["-c", "echo ran"]);
  out.spawn[bin] = r.error ? r.error.code : String(r.stdout).trim();
}
try { execSync("ls"); out.spawn.ls = "ran"; } catch (e) { out.spawn.ls = e.code; }
const self = spawnSync(process.execPath, ["--version"]);
out.spawn.node = String(self.stdout).trim();
(async () => {
  if (out.loaded.stripe === "ok") {
    try { await import("node-fetch"); out.loaded["node-fetch"] = "ok"; } catch (e) { out.loaded["node-fetch"] = e.code || e.message; }
  }
  console.log(JSON.stringify(out));
})();
`

type profileReport struct {
	Version string
	Loaded  map[string]string
	Spawn   map[string]string
}

// TestImageProfiles: a request names an image by profile and Node.js
// major; node and node-sdk of both majors are on the default allowlist,
// node-debug is refused before anything is created unless the operator
// lists it, and then it has a shell. node-sdk loads every package it
// promises, offline; in it as in node, nothing but node can be spawned.
func TestImageProfiles(t *testing.T) {
	e := startExecutor(t, executorOpts{allow: defaultAllowlist})
	pkgs, _ := json.Marshal(sdkPackages)
	probeIn := func(image string) (profileReport, *run) {
		t.Helper()
		var got profileReport
		r := probe(t, e, &executorv1.ExecuteRequest{Image: image, Code: profileProbe, Args: []string{string(pkgs)}}, &got)
		return got, r
	}

	for _, tt := range []struct{ image, ref, version string }{
		{"", "sandpit.local/node:24", "v24.21.0"},
		{"node:22", node22, "v22.23.5"},
		{"node-sdk", sdkImage, "v24.21.0"},
	} {
		got, r := probeIn(tt.image)
		if r.started.GetImage() != tt.ref || got.Version != tt.version || got.Spawn["node"] != tt.version {
			t.Errorf("image %q: ran %s node %s (spawned %q), want %s node %s", tt.image, r.started.GetImage(), got.Version, got.Spawn["node"], tt.ref, tt.version)
		}
		for _, bin := range []string{"sh", "python3", "curl", "ls"} {
			if got.Spawn[bin] != "ENOENT" {
				t.Errorf("image %q: %s gave %q, want ENOENT", tt.image, bin, got.Spawn[bin])
			}
		}
		for _, p := range append(sdkPackages, "node-fetch") {
			want := "MODULE_NOT_FOUND"
			if tt.ref == sdkImage {
				want = "ok"
			} else if p == "node-fetch" {
				continue // only tried where stripe loads
			}
			if got.Loaded[p] != want {
				t.Errorf("image %q: require(%s) = %q, want %s", tt.image, p, got.Loaded[p], want)
			}
		}
	}

	r := e.execute(t.Context(), &executorv1.ExecuteRequest{Image: "node-debug", Code: "1"})
	if status.Code(r.err) != codes.PermissionDenied || !strings.Contains(r.err.Error(), debugImage) || r.started != nil {
		t.Errorf("node-debug on the default allowlist: %v (started %v), want PermissionDenied IMAGE_NOT_ALLOWED before anything ran", r.err, r.started)
	}

	// Listed, node-debug is still refused by the image check for its
	// shell, until the operator lets shells through.
	listed := startExecutor(t, executorOpts{allow: append(defaultAllowlist, debugImage)})
	r = listed.execute(t.Context(), &executorv1.ExecuteRequest{Image: "node-debug", Code: "1"})
	if status.Code(r.err) != codes.PermissionDenied || !strings.Contains(r.err.Error(), "shell (/usr/bin/busybox, /usr/bin/sh)") || r.started != nil {
		t.Errorf("node-debug listed, shells not allowed: %v, want PermissionDenied IMAGE_CONTENT_FORBIDDEN naming the shell", r.err)
	}
	insp, err := listed.client.InspectImage(t.Context(), &executorv1.InspectImageRequest{Image: "node-debug"})
	if err != nil || !slices.Equal(insp.GetForbidden(), []string{"shell"}) || insp.GetImage() != debugImage || insp.GetNodeVersion() != "24.21.0" {
		t.Errorf("InspectImage(node-debug): %v %v, want shell forbidden", insp, err)
	}
	if insp, err := listed.client.InspectImage(t.Context(), &executorv1.InspectImageRequest{Image: "node-sdk"}); err != nil || len(insp.GetForbidden()) != 0 || len(insp.GetFindings()) != 1 {
		t.Errorf("InspectImage(node-sdk): %v %v, want node alone", insp, err)
	}

	dbg := startExecutor(t, executorOpts{allow: append(defaultAllowlist, debugImage), flags: []string{"--image-allow-classes", "shell"}})
	var got profileReport
	probe(t, dbg, &executorv1.ExecuteRequest{Image: "node-debug", Code: profileProbe, Args: []string{"[]"}}, &got)
	if got.Spawn["sh"] != "ran" {
		t.Errorf("node-debug, allowed by the operator: sh gave %q, want it to run", got.Spawn["sh"])
	}
}

// TestSDKProfileCallsOpenAI: node-sdk's OpenAI SDK reaches a local
// stand-in through the proxy (the Stripe SDK's calls are
// TestStripeSDKAndAxiosThroughPolicy's).
func TestSDKProfileCallsOpenAI(t *testing.T) {
	var auth string
	s := startNetStackWith(t, basePolicy, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		if r.URL.Path != "/v1/chat/completions" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-test","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hello from the stand-in"}}]}`)
	}))
	var got struct{ Content, Error string }
	probe(t, s.e, &executorv1.ExecuteRequest{Image: "node-sdk", Code: `
const OpenAI = require("openai");
const openai = new OpenAI({ apiKey: "sk-test-profile", baseURL: "https://api.github.test/v1", maxRetries: 0 });
openai.chat.completions.create({ model: "gpt-test", messages: [{ role: "user", content: "hi" }] })
  .then(c => console.log(JSON.stringify({ content: c.choices[0].message.content })))
  .catch(e => console.log(JSON.stringify({ error: String(e) })));
`}, &got)
	if got.Content != "hello from the stand-in" || auth != "Bearer sk-test-profile" {
		t.Errorf("OpenAI through the proxy: %+v (the stand-in saw %q)", got, auth)
	}
}
