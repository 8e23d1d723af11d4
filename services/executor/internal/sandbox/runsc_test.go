//go:build linux

package sandbox

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
)

// TestRunscSpecAllowsOnlyClone3 asserts that under runsc the default
// profile's clone3 refusal, and nothing else, becomes an allow, and that a
// runc spec is left as it is.
func TestRunscSpecAllowsOnlyClone3(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "spec-test")
	gen := func(rt ociruntime.Name) *oci.Spec {
		opts := append([]oci.SpecOpts{seccomp.WithDefaultProfile()}, runscSpecOpts(Spec{Runtime: rt})...)
		spec, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: "spec-test-id"}, opts...)
		if err != nil {
			t.Fatalf("generate spec: %v", err)
		}
		return spec
	}
	actions := func(s *oci.Spec) map[string]specs.LinuxSeccompAction {
		m := map[string]specs.LinuxSeccompAction{}
		for _, r := range s.Linux.Seccomp.Syscalls {
			for _, n := range r.Names {
				if _, seen := m[n]; !seen {
					m[n] = r.Action
				}
			}
		}
		return m
	}
	runc, runsc := actions(gen(ociruntime.Runc)), actions(gen(ociruntime.Runsc))
	if runc["clone3"] != specs.ActErrno {
		t.Fatalf("runc: clone3 %q, want the default profile's errno rule", runc["clone3"])
	}
	if runsc["clone3"] != specs.ActAllow {
		t.Errorf("runsc: clone3 %q, want allowed", runsc["clone3"])
	}
	for n, a := range runc {
		if n != "clone3" && runsc[n] != a {
			t.Errorf("runsc: %s %q, want %q as under runc", n, runsc[n], a)
		}
	}
	if len(runsc) != len(runc) {
		t.Errorf("runsc names %d syscalls, runc %d", len(runsc), len(runc))
	}
	if err := withClone3Allowed(ctx, nil, nil, &oci.Spec{Linux: &specs.Linux{}}); err == nil {
		t.Error("a spec without a seccomp profile was accepted")
	}
}

// TestRunscLaunchers asserts the scripts the runc shim runs: each passes
// runsc its flags and then every argument unchanged, quoting included.
func TestRunscLaunchers(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "it's runsc")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	l := newRunsc(Config{RunscPath: fake, RunscPlatform: RunscPlatformKVM, StateDir: dir})
	if l.missing != nil {
		t.Fatal(l.missing)
	}
	for path, network := range map[string]string{l.netns: "host", l.loopback: "none"} {
		out, err := exec.Command(path, "--root", "/run/x y", "create", "id").Output()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		want := "[--platform=kvm]\n[--network=" + network + "]\n[--oci-seccomp]\n[--root]\n[/run/x y]\n[create]\n[id]\n"
		if string(out) != want {
			t.Errorf("%s ran runsc with\n%s\nwant\n%s", filepath.Base(path), out, want)
		}
	}

	for _, cfg := range []Config{{StateDir: dir}, {RunscPath: filepath.Join(dir, "absent"), StateDir: dir}} {
		l := newRunsc(cfg)
		if !errors.Is(l.missing, ErrRuntimeUnavailable) || !strings.Contains(l.missing.Error(), "runsc") {
			t.Errorf("runsc %q: %v, want ErrRuntimeUnavailable naming runsc", cfg.RunscPath, l.missing)
		}
	}
}

// TestRunscSpecHasNoUserNamespace asserts that under runsc a spec's user
// namespace and id mappings are removed and its other namespaces kept.
func TestRunscSpecHasNoUserNamespace(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "spec-test")
	userns := func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1 << 31, Size: 65536}}
		s.Linux.GIDMappings = s.Linux.UIDMappings
		return nil
	}
	opts := append([]oci.SpecOpts{seccomp.WithDefaultProfile(), userns}, runscSpecOpts(Spec{Runtime: ociruntime.Runsc})...)
	spec, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: "spec-test-id"}, opts...)
	if err != nil {
		t.Fatalf("generate spec: %v", err)
	}
	var types []specs.LinuxNamespaceType
	for _, ns := range spec.Linux.Namespaces {
		types = append(types, ns.Type)
	}
	if slices.Contains(types, specs.UserNamespace) || spec.Linux.UIDMappings != nil || spec.Linux.GIDMappings != nil {
		t.Errorf("runsc spec keeps a user namespace: %v, uid map %v, gid map %v", types, spec.Linux.UIDMappings, spec.Linux.GIDMappings)
	}
	for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.MountNamespace, specs.NetworkNamespace} {
		if !slices.Contains(types, want) {
			t.Errorf("runsc spec lost the %s namespace: %v", want, types)
		}
	}
}
