package e2e

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

func TestCommonJSAndESModules(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	tests := []struct {
		name string
		req  *executorv1.ExecuteRequest
		want string
	}{
		{"commonjs", code(`const os = require("os"); console.log(typeof os.cpus, typeof module)`), "function object\n"},
		{"esm detected in .js", code(`import os from "node:os"; console.log(typeof os.cpus, typeof module)`), "function undefined\n"},
		{"top-level await", code(`await new Promise(r => setTimeout(r, 10)); console.log("awaited")`), "awaited\n"},
		{"mjs entrypoint", &executorv1.ExecuteRequest{Code: `export const x = 1; console.log(import.meta.url)`, Entrypoint: "main.mjs"}, "file:///sandbox/main.mjs\n"},
		{"multi-file esm", &executorv1.ExecuteRequest{
			Files: []*executorv1.File{
				{Path: "index.mjs", Content: []byte(`import { greet } from "./lib/greet.mjs"; console.log(greet("esm"))`)},
				{Path: "lib/greet.mjs", Content: []byte(`export const greet = n => "hello " + n;`)},
			},
			Entrypoint: "index.mjs",
		}, "hello esm\n"},
		{"multi-file commonjs with package.json", &executorv1.ExecuteRequest{
			Files: []*executorv1.File{
				{Path: "package.json", Content: []byte(`{"type": "commonjs"}`)},
				{Path: "src/main.js", Content: []byte(`console.log(require("./util").twice(21))`)},
				{Path: "src/util.js", Content: []byte(`exports.twice = n => n * 2;`)},
			},
			Entrypoint: "src/main.js",
		}, "42\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.mustRun(t, tt.req)
			if string(r.stdout) != tt.want || r.result.GetExitCode() != 0 {
				t.Errorf("stdout %q exit %d, want %q exit 0\nstderr: %s", r.stdout, r.result.GetExitCode(), tt.want, r.stderr)
			}
		})
	}
}

func TestStdinEnvArgsAndExitCode(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	r := e.mustRun(t, &executorv1.ExecuteRequest{
		Code: `
let input = "";
process.stdin.on("data", d => input += d);
process.stdin.on("end", () => {
  console.log(JSON.stringify({input, greeting: process.env.GREETING, home: process.env.HOME, args: process.argv.slice(2), keys: Object.keys(process.env).sort()}));
  process.exit(7);
});`,
		Stdin: []byte("line one\nline two\n"),
		Env:   map[string]string{"GREETING": "hi there"},
		Args:  []string{"--flag", "value with spaces"},
	})
	want := `{"input":"line one\nline two\n","greeting":"hi there","home":"/tmp","args":["--flag","value with spaces"],"keys":["GREETING","HOME","PATH"]}` + "\n"
	if string(r.stdout) != want {
		t.Errorf("stdout\n%s\nwant\n%s\nstderr: %s", r.stdout, want, r.stderr)
	}
	if r.result.GetExitCode() != 7 || r.result.GetSignal() != "" {
		t.Errorf("exit %d signal %q, want 7 and none", r.result.GetExitCode(), r.result.GetSignal())
	}
}

func TestNoStdinReadsEOF(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	r := e.mustRun(t, code(`let n = 0; process.stdin.on("data", d => n += d.length); process.stdin.on("end", () => console.log("eof", n));`))
	if string(r.stdout) != "eof 0\n" {
		t.Errorf("stdout %q, want eof 0", r.stdout)
	}
}

func TestBinaryOutputIsPassedAsBytes(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	r := e.mustRun(t, code(`process.stdout.write(Buffer.from([0xff, 0xfe, 0x00, 0xc3]))`))
	if string(r.stdout) != "\xff\xfe\x00\xc3" {
		t.Errorf("stdout %x, want fffe00c3", r.stdout)
	}
}

// TestInvalidRequests checks that bad input is refused with InvalidArgument
// naming the field, and that nothing is created for it.
func TestInvalidRequests(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	big := strings.Repeat("x", 2<<20)
	tests := []struct {
		name  string
		req   *executorv1.ExecuteRequest
		field string
	}{
		{"no code", &executorv1.ExecuteRequest{}, "code"},
		{"code and files", &executorv1.ExecuteRequest{Code: "1", Files: []*executorv1.File{{Path: "a.js"}}}, "code"},
		{"code over the cap", code(big), "code"},
		{"stdin over the cap", &executorv1.ExecuteRequest{Code: "1", Stdin: []byte(big)}, "code"},
		{"timeout over max", &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{Timeout: durationpb.New(time.Hour)}}, "limits.timeout"},
		{"negative timeout", &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{Timeout: durationpb.New(-time.Second)}}, "limits.timeout"},
		{"memory over max", &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{MemoryBytes: 1 << 40}}, "limits.memory_bytes"},
		{"memory under floor", &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{MemoryBytes: 1 << 20}}, "limits.memory_bytes"},
		{"pids over max", &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{Pids: 1 << 20}}, "limits.pids"},
		{"cpu over max", &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{CpuMillicores: 64000}}, "limits.cpu_millicores"},
		{"output over max", &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{OutputBytes: 1 << 40}}, "limits.output_bytes"},
		{"tmp over max", &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{TmpBytes: 1 << 40}}, "limits.tmp_bytes"},
		{"open files over max", &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{OpenFiles: 1 << 30}}, "limits.open_files"},
		{"code bytes over max", &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{CodeBytes: 1 << 40}}, "limits.code_bytes"},
		{"invalid env name", &executorv1.ExecuteRequest{Code: "1", Env: map[string]string{"BAD-NAME": "x"}}, `env["BAD-NAME"]`},
		{"reserved env", &executorv1.ExecuteRequest{Code: "1", Env: map[string]string{"PATH": "/"}}, `env["PATH"]`},
		{"env value with NUL", &executorv1.ExecuteRequest{Code: "1", Env: map[string]string{"A": "x\x00y"}}, `env["A"]`},
		{"absolute path", &executorv1.ExecuteRequest{Files: []*executorv1.File{{Path: "/etc/passwd"}}}, "files[0].path"},
		{"escaping path", &executorv1.ExecuteRequest{Files: []*executorv1.File{{Path: "../x.js"}}}, "files[0].path"},
		{"dot segment", &executorv1.ExecuteRequest{Files: []*executorv1.File{{Path: "a/./b.js"}}}, "files[0].path"},
		{"duplicate path", &executorv1.ExecuteRequest{Files: []*executorv1.File{{Path: "a.js"}, {Path: "a.js"}}, Entrypoint: "a.js"}, "files[1].path"},
		{"file and dir", &executorv1.ExecuteRequest{Files: []*executorv1.File{{Path: "a"}, {Path: "a/b.js"}}, Entrypoint: "a/b.js"}, "files"},
		{"missing entrypoint", &executorv1.ExecuteRequest{Files: []*executorv1.File{{Path: "a.js"}, {Path: "b.js"}}}, "entrypoint"},
		{"unknown entrypoint", &executorv1.ExecuteRequest{Files: []*executorv1.File{{Path: "a.js"}}, Entrypoint: "b.js"}, "entrypoint"},
		{"tsx entrypoint (node strips no JSX)", &executorv1.ExecuteRequest{Code: "1", Entrypoint: "app.tsx"}, "entrypoint"},
		{"bad label", &executorv1.ExecuteRequest{Code: "1", Labels: map[string]string{"Bad Key": "v"}}, `labels["Bad Key"]`},
		{"arg with NUL", &executorv1.ExecuteRequest{Code: "1", Args: []string{"a\x00"}}, "args[0]"},
		{"policy path not absolute", &executorv1.ExecuteRequest{Code: "1", Policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{{
			Host: "api.example.com", Rules: []*policyv1.Rule{{Path: "v1/x", Action: policyv1.Action_ACTION_ALLOW}},
		}}}}, "policy.hosts[0].rules[0].path"},
		{"policy bare wildcard host", &executorv1.ExecuteRequest{Code: "1", Policy: &policyv1.Policy{Hosts: []*policyv1.HostPolicy{{Host: "*"}}}}, "policy.hosts[0].host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.execute(context.Background(), tt.req)
			st := status.Convert(r.err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("got %v (events %d), want InvalidArgument", r.err, len(r.events))
			}
			if reason := errorReason(t, r.err); reason != reasonInvalidArgument {
				t.Errorf("reason %q, want %s", reason, reasonInvalidArgument)
			}
			if len(r.events) != 0 {
				t.Errorf("%d events before the error", len(r.events))
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
						if v.GetDescription() == "" {
							t.Errorf("violation of %s has no description", v.GetField())
						}
					}
				}
			}
			found := false
			for _, f := range fields {
				found = found || f == tt.field
			}
			if !found {
				t.Errorf("violations name %v, want %s (message %q)", fields, tt.field, st.Message())
			}
		})
	}
	requireNoLeftovers(t, stateDir, "")
}

// TestImageErrors: a name off the allowlist is PERMISSION_DENIED before
// anything is created; an allowed name containerd lacks is NOT_FOUND.
func TestImageErrors(t *testing.T) {
	e := startExecutor(t, executorOpts{allow: []string{"sandpit.local/*"}})
	tests := []struct {
		image  string
		code   codes.Code
		reason string
	}{
		{"docker.io/library/node:24", codes.PermissionDenied, reasonImageNotAllowed},
		{"sandpit.local/does-not-exist:1", codes.NotFound, reasonImageNotFound},
	}
	for _, tt := range tests {
		r := e.execute(context.Background(), &executorv1.ExecuteRequest{Code: "1", Image: tt.image})
		if status.Code(r.err) != tt.code || errorReason(t, r.err) != tt.reason || len(r.events) != 0 {
			t.Errorf("image %s: %v after %d events, want %v %s", tt.image, r.err, len(r.events), tt.code, tt.reason)
		}
	}
	requireNoLeftovers(t, stateDir, "")
}

// TestCapacityQueueThenResourceExhausted fills one slot and one queue place
// and checks that the next request is refused at once, that the queued one
// runs when the slot frees, and that the refusal left nothing behind.
func TestCapacityQueueThenResourceExhausted(t *testing.T) {
	e := startExecutor(t, executorOpts{slots: 1, queue: 1})
	release := make(chan struct{})
	var wg sync.WaitGroup
	results := make([]*run, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := code(`setTimeout(() => console.log("done"), 1500)`)
			if i == 1 {
				<-release
				req = code(`console.log("queued ran")`)
			}
			results[i] = e.execute(context.Background(), req)
		}()
	}
	for e.app.Slots().InFlight() != 1 {
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	for e.app.Slots().Waiting() != 1 {
		time.Sleep(5 * time.Millisecond)
	}
	begin := time.Now()
	r := e.execute(context.Background(), code(`console.log("too many")`))
	if status.Code(r.err) != codes.ResourceExhausted || errorReason(t, r.err) != reasonSlotsFull {
		t.Fatalf("third request: %v, want ResourceExhausted SLOTS_FULL", r.err)
	}
	if retryDelay(r.err) <= 0 {
		t.Errorf("ResourceExhausted without RetryInfo: %v", status.Convert(r.err).Details())
	}
	if d := time.Since(begin); d > time.Second {
		t.Errorf("the refusal took %v; it must not wait", d)
	}
	wg.Wait()
	if string(results[0].stdout) != "done\n" || string(results[1].stdout) != "queued ran\n" {
		t.Errorf("running: %q %v; queued: %q %v", results[0].stdout, results[0].err, results[1].stdout, results[1].err)
	}
	requireNoLeftovers(t, stateDir, "")
}

func TestLimitsDefaultsAreReported(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	r := e.mustRun(t, &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{MemoryBytes: 128 << 20}})
	got := r.started.GetLimits()
	if got.GetMemoryBytes() != 128<<20 || got.GetTimeout().AsDuration() != 10*time.Second || got.GetPids() != 128 {
		t.Errorf("started.limits %v: want memory 128 MiB and the README's defaults (timeout 10s, pids 128)", got)
	}
}

// TestOpenFilesAboveTheHostsLimitIsRefused: where the host's hard
// RLIMIT_NOFILE is below the executor's maximum, the maximum is lowered to
// it, so a request for more is an InvalidArgument naming the field rather
// than an internal error from the runtime.
func TestOpenFilesAboveTheHostsLimitIsRefused(t *testing.T) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	e := startExecutor(t, executorOpts{})
	const executorMax = 65536
	if rl.Max >= executorMax {
		r := e.mustRun(t, &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{OpenFiles: executorMax}})
		if r.started.GetLimits().GetOpenFiles() != executorMax {
			t.Errorf("open_files %d, want %d", r.started.GetLimits().GetOpenFiles(), executorMax)
		}
		return
	}
	r := e.execute(context.Background(), &executorv1.ExecuteRequest{Code: "1", Limits: &executorv1.Limits{OpenFiles: uint32(rl.Max) + 1}})
	st := status.Convert(r.err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "limits.open_files") {
		t.Fatalf("open_files %d over the host's %d: %v, want InvalidArgument on limits.open_files", rl.Max+1, rl.Max, r.err)
	}
	ok := e.mustRun(t, &executorv1.ExecuteRequest{Code: "console.log(1)", Limits: &executorv1.Limits{OpenFiles: uint32(rl.Max)}})
	if string(ok.stdout) != "1\n" {
		t.Errorf("at the host's limit %d: stdout %q, result %v", rl.Max, ok.stdout, ok.result)
	}
}
