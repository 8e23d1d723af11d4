package server

import (
	"context"
	"strings"
	"time"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/executor/internal/warmpool"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Reservation is a sandbox's egress prepared for no execution yet (a warm
// sandbox's, from its boot): its requests are denied until Bind.
type Reservation interface {
	// Contribute adds what the sandbox's spec needs, as Network's.
	Contribute(spec *sandbox.Spec)
	// Bind gives the sandbox's address to execution id, narrowed by
	// narrow, its events to events.
	Bind(id string, narrow *policy.Compiled, events chan<- *executorv1.NetworkEvent) Network
	// Current reports whether a sandbox prepared now would trust the
	// same proxy.
	Current() bool
	// Release gives the addresses back; once the sandbox is gone.
	Release() error
}

// Pool hands out warm sandboxes; *warmpool.Pool is the real one.
type Pool interface {
	Take() warmpool.Sandbox
}

// warm is a warm sandbox booted by BootWarm.
type warm struct {
	w   *sandbox.Warm
	img sandbox.Image
	net Reservation // nil without egress
}

func (w *warm) Alive() bool     { return w.w.Alive() && (w.net == nil || w.net.Current()) }
func (w *warm) Born() time.Time { return w.w.Born }
func (w *warm) Discard()        { w.w.Discard() }

// BootWarm boots one sandbox for the warm pool: the default image, the
// default limits, the default entrypoint, the executor's own environment
// and, with egress, the network of no execution yet.
func (s *Service) BootWarm(ctx context.Context) (warmpool.Sandbox, error) {
	img, err := s.sb.ResolveImage(ctx, s.cfg.DefaultImage)
	if err != nil {
		return nil, err
	}
	if err := s.CheckImage(ctx, img); err != nil {
		return nil, err
	}
	spec := sandbox.Spec{
		Image:      img,
		NodePath:   s.cfg.NodePath,
		Entrypoint: defaultEntrypoint,
		Env:        environment(nil),
		Limits:     s.cfg.Defaults,
	}
	w := &warm{img: img}
	if s.cfg.Egress != nil {
		if w.net, err = s.cfg.Egress.Prepare(); err != nil {
			return nil, err
		}
		w.net.Contribute(&spec)
		spec.Released = func() {
			if err := w.net.Release(); err != nil {
				s.log.Error("remove warm sandbox network", "error", err)
			}
		}
	}
	if w.w, err = s.sb.Boot(ctx, sandbox.NewID(), spec); err != nil {
		return nil, err
	}
	return w, nil
}

// takeWarm returns a warm sandbox prog can run in exactly as in a cold one,
// or nil.
func (s *Service) takeWarm(prog program, img sandbox.Image, req *executorv1.ExecuteRequest, secrets []decision.Secret) *warm {
	if s.cfg.Pool == nil || !s.fitsWarm(prog, img, req, secrets) {
		return nil
	}
	sb := s.cfg.Pool.Take()
	if sb == nil {
		return nil
	}
	w := sb.(*warm)
	if w.img.Digest != img.Digest {
		// The default image changed since the boot.
		w.Discard()
		return nil
	}
	return w
}

// fitsWarm reports whether prog may run in a warm sandbox: what node reads
// only at start-up, and /tmp's size and the open-files limit, are the
// pool's.
func (s *Service) fitsWarm(prog program, img sandbox.Image, req *executorv1.ExecuteRequest, secrets []decision.Secret) bool {
	d := s.cfg.Defaults
	l := prog.limits
	switch {
	case prog.runtime != ociruntime.Runc && prog.runtime != "",
		img.Ref != s.cfg.DefaultImage,
		prog.entrypoint != defaultEntrypoint,
		l.TmpBytes != d.TmpBytes, l.OpenFiles != d.OpenFiles, sandbox.TmpInodes(l) != sandbox.TmpInodes(d):
		return false
	}
	for k := range req.GetEnv() {
		if startupVariable(k) {
			return false
		}
	}
	for _, x := range secrets {
		if startupVariable(x.Env) {
			return false
		}
	}
	return true
}

// startupVariable reports whether node, libuv, OpenSSL or the C library
// may read the variable only when node starts, so that setting it in a
// warm sandbox's node would not do what it does in a cold one.
func startupVariable(name string) bool {
	for _, p := range []string{"NODE_", "UV_", "OPENSSL_", "SSL_", "LD_", "MALLOC_"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return name == "GLIBC_TUNABLES"
}
