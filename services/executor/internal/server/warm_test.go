package server

import (
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
)

// TestFitsWarm: a request runs warm only when everything node fixes at
// start-up is the pool's; each way of differing sends it cold.
func TestFitsWarm(t *testing.T) {
	s := newService(t, &fakeSandboxes{}, nil)
	img := sandbox.Image{Ref: s.cfg.DefaultImage, Digest: "sha256:feed"}
	fits := func(mod func(*program, *executorv1.ExecuteRequest, *sandbox.Image, *[]decision.Secret)) bool {
		req := &executorv1.ExecuteRequest{Code: "1", Env: map[string]string{"FOO": "1", "TZ": "UTC"}}
		prog, vs := s.validate(req)
		if len(vs) > 0 {
			t.Fatal(vs)
		}
		im, secrets := img, []decision.Secret{{Env: "STRIPE_KEY"}}
		mod(&prog, req, &im, &secrets)
		return s.fitsWarm(prog, im, req, secrets)
	}
	if !fits(func(*program, *executorv1.ExecuteRequest, *sandbox.Image, *[]decision.Secret) {}) {
		t.Fatal("a plain request does not fit the pool")
	}
	if !fits(func(p *program, _ *executorv1.ExecuteRequest, _ *sandbox.Image, _ *[]decision.Secret) {
		p.limits.MemoryBytes, p.limits.CPUMillicores, p.limits.Pids, p.limits.Timeout = 64<<20, 100, 32, 1
	}) {
		t.Error("memory, CPU, pids and timeout are applied at the claim, yet they send a request cold")
	}
	cold := map[string]func(*program, *executorv1.ExecuteRequest, *sandbox.Image, *[]decision.Secret){
		"another image": func(_ *program, _ *executorv1.ExecuteRequest, i *sandbox.Image, _ *[]decision.Secret) {
			i.Ref = "sandpit.local/node-sdk:24"
		},
		"runsc": func(p *program, _ *executorv1.ExecuteRequest, _ *sandbox.Image, _ *[]decision.Secret) {
			p.runtime = ociruntime.Runsc
		},
		"entrypoint": func(p *program, _ *executorv1.ExecuteRequest, _ *sandbox.Image, _ *[]decision.Secret) {
			p.entrypoint = "index.mjs"
		},
		"tmp size": func(p *program, _ *executorv1.ExecuteRequest, _ *sandbox.Image, _ *[]decision.Secret) {
			p.limits.TmpBytes *= 2
		},
		"open files": func(p *program, _ *executorv1.ExecuteRequest, _ *sandbox.Image, _ *[]decision.Secret) {
			p.limits.OpenFiles = 64
		},
		"/tmp inodes": func(p *program, _ *executorv1.ExecuteRequest, _ *sandbox.Image, _ *[]decision.Secret) {
			p.limits.MemoryBytes = 32 << 20
		},
		"NODE_OPTIONS": func(_ *program, r *executorv1.ExecuteRequest, _ *sandbox.Image, _ *[]decision.Secret) {
			r.Env["NODE_OPTIONS"] = "--max-old-space-size=64"
		},
		"UV_THREADPOOL": func(_ *program, r *executorv1.ExecuteRequest, _ *sandbox.Image, _ *[]decision.Secret) {
			r.Env["UV_THREADPOOL_SIZE"] = "1"
		},
		"LD_PRELOAD": func(_ *program, r *executorv1.ExecuteRequest, _ *sandbox.Image, _ *[]decision.Secret) {
			r.Env["LD_PRELOAD"] = "/x.so"
		},
		"GLIBC_TUNABLES": func(_ *program, r *executorv1.ExecuteRequest, _ *sandbox.Image, _ *[]decision.Secret) {
			r.Env["GLIBC_TUNABLES"] = "x"
		},
		"a secret's NODE_": func(_ *program, _ *executorv1.ExecuteRequest, _ *sandbox.Image, s *[]decision.Secret) {
			*s = append(*s, decision.Secret{Env: "NODE_AUTH_TOKEN"})
		},
	}
	for name, mod := range cold {
		if fits(mod) {
			t.Errorf("%s: fits the pool, want cold", name)
		}
	}
}
