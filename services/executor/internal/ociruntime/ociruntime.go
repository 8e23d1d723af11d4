// Package ociruntime chooses the OCI runtime a sandbox runs under: the
// executor's default, or the runtime the sandbox's image is bound to.
package ociruntime

import (
	"fmt"
	"slices"
	"strings"
)

// Name is an OCI runtime the executor can run sandboxes under.
type Name string

const (
	// Runc is runc: namespaces, seccomp and cgroups on the host kernel.
	Runc Name = "runc"
	// Runsc is gVisor's runsc: the program's system calls are served by a
	// kernel in user space (the Sentry), not by the host kernel.
	Runsc Name = "runsc"
)

// Names lists every runtime, in the order flags and docs name them.
var Names = []Name{Runc, Runsc}

// Parse returns the runtime called s.
func Parse(s string) (Name, error) {
	for _, n := range Names {
		if string(n) == s {
			return n, nil
		}
	}
	return "", fmt.Errorf("unknown OCI runtime %q: want runc or runsc", s)
}

// Binding runs the images Image names under Runtime.
type Binding struct {
	// Image is an image reference, or a prefix of one ending in *, as in
	// the image allowlist.
	Image   string
	Runtime Name
}

// ParseBinding reads REF=RUNTIME (sandpit.local/node-sdk:24=runsc).
func ParseBinding(s string) (Binding, error) {
	ref, rt, ok := strings.Cut(s, "=")
	ref = strings.TrimSpace(ref)
	if !ok || ref == "" || ref == "*" {
		return Binding{}, fmt.Errorf("image runtime %q: want IMAGE=RUNTIME, IMAGE an image reference or a prefix ending in *", s)
	}
	n, err := Parse(strings.TrimSpace(rt))
	if err != nil {
		return Binding{}, fmt.Errorf("image runtime %q: %w", s, err)
	}
	return Binding{Image: ref, Runtime: n}, nil
}

func (b Binding) matches(image string) bool {
	if p, ok := strings.CutSuffix(b.Image, "*"); ok {
		return strings.HasPrefix(image, p)
	}
	return b.Image == image
}

// Request is what the choice of one sandbox's runtime depends on. It is a
// struct so that a later source of the choice (the caller's tier, say) is a
// new field and a new rule in Choose, not a new signature.
type Request struct {
	// Image is the image reference the sandbox runs.
	Image string
}

// Table chooses runtimes: the first binding that matches, else Default.
// The zero Table runs everything under runc.
type Table struct {
	Default  Name
	Bindings []Binding
}

// Choose returns the runtime r runs under.
func (t Table) Choose(r Request) Name {
	for _, b := range t.Bindings {
		if b.matches(r.Image) {
			return b.Runtime
		}
	}
	return t.fallback()
}

func (t Table) fallback() Name {
	if t.Default == "" {
		return Runc
	}
	return t.Default
}

// Used lists the runtimes t can choose, the default first, each once.
func (t Table) Used() []Name {
	used := []Name{t.fallback()}
	for _, b := range t.Bindings {
		if !slices.Contains(used, b.Runtime) {
			used = append(used, b.Runtime)
		}
	}
	return used
}
