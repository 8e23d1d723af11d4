package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
)

// ErrRuntimeUnavailable is wrapped by Installed's and Run's error when a
// sandbox's OCI runtime is not installed on this host.
var ErrRuntimeUnavailable = errors.New("OCI runtime not installed")

// runcShim is the containerd shim both runtimes run under: Debian's runsc
// ships no containerd-shim-runsc-v1, and runsc speaks runc's command line.
const runcShim = "io.containerd.runc.v2"

// runsc platforms (--runsc-platform). systrap is newer than Debian
// bookworm's runsc.
const (
	RunscPlatformPtrace = "ptrace"
	RunscPlatformKVM    = "kvm"
)

// runscLaunchers are the two ways the runc shim runs runsc, each a small
// script in the state dir that adds runsc's flags: the shim passes a runc
// command line and nothing else.
//
// --network=host in a sandbox with egress: runsc's own network stack
// (--network=sandbox) refuses to start on Linux 6.x, whose non-initial
// network namespaces also have /proc/sys/net/core/rmem_default, the file
// this runsc takes to mean "root namespace" ("cannot run with network
// enabled in root network namespace"). With host networking the Sentry
// makes socket calls in the sandbox's own namespace, so its veth, address
// and the host's nftables rules apply as under runc.
//
// --network=none in a sandbox without egress: loopback served by the
// Sentry, nothing of the host's stack.
//
// --oci-seccomp: the Sentry enforces the spec's seccomp profile on the
// program (runsc ignores it otherwise).
type runscLaunchers struct {
	netns, loopback string
	// missing says why runsc cannot be used, or is nil.
	missing error
}

func newRunsc(cfg Config) runscLaunchers {
	if cfg.RunscPath == "" {
		return runscLaunchers{missing: fmt.Errorf("%w: runsc: no --runsc path configured", ErrRuntimeUnavailable)}
	}
	if _, err := os.Stat(cfg.RunscPath); err != nil {
		return runscLaunchers{missing: fmt.Errorf("%w: runsc: %w", ErrRuntimeUnavailable, err)}
	}
	platform := cfg.RunscPlatform
	if platform == "" {
		platform = RunscPlatformPtrace
	}
	l := runscLaunchers{
		netns:    filepath.Join(cfg.StateDir, "runsc-netns"),
		loopback: filepath.Join(cfg.StateDir, "runsc-loopback"),
	}
	for path, network := range map[string]string{l.netns: "host", l.loopback: "none"} {
		if err := writeLauncher(path, cfg.RunscPath, "--platform="+platform, "--network="+network, "--oci-seccomp"); err != nil {
			return runscLaunchers{missing: fmt.Errorf("%w: runsc: %w", ErrRuntimeUnavailable, err)}
		}
	}
	return l
}

// writeLauncher writes, atomically, a script that runs bin with flags and
// then the arguments it was given.
func writeLauncher(path, bin string, flags ...string) error {
	words := []string{"exec", shellQuote(bin)}
	for _, f := range flags {
		words = append(words, shellQuote(f))
	}
	script := "#!/bin/sh\n# Written by sandpit-executor: the runc shim runs this as its runc.\n" + strings.Join(words, " ") + ` "$@"` + "\n"
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(script), 0o755); err != nil {
		return fmt.Errorf("write launcher: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write launcher: %w", err)
	}
	return nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Installed reports whether sandboxes can run under n on this host; the
// error wraps ErrRuntimeUnavailable and says why not.
func (r *Runtime) Installed(n ociruntime.Name) error {
	switch n {
	case ociruntime.Runc, "":
		return nil
	case ociruntime.Runsc:
		return r.runsc.missing
	}
	return fmt.Errorf("%w: %s", ErrRuntimeUnavailable, n)
}

// withRuntime runs the container under s's runtime through the runc shim.
func (r *Runtime) withRuntime(s Spec) containerd.NewContainerOpts {
	bin := r.cfg.RuncPath
	if s.Runtime == ociruntime.Runsc {
		bin = r.runsc.loopback
		if s.Network != nil {
			bin = r.runsc.netns
		}
	}
	if err := r.Installed(s.Runtime); err != nil {
		return func(context.Context, *containerd.Client, *containers.Container) error { return err }
	}
	return containerd.WithRuntime(runcShim, &options.Options{BinaryName: bin})
}

// deleteTask kills task's processes, unless they have ended, and deletes
// it. runsc answers a kill of an ended sandbox with "sandbox is not
// running", which the runc shim does not take for "not found" as it does
// runc's "container not running", and one of a created sandbox (its
// start failed) with "cannot signal container in state created"; the
// client then refuses to delete a created task that was not killed, so
// that one is deleted through the task service, which runs runsc delete.
func (r *Runtime) deleteTask(ctx context.Context, task containerd.Task) error {
	_, err := task.Delete(ctx, killUnlessStopped)
	if errdefs.IsFailedPrecondition(err) {
		if st, serr := task.Status(ctx); serr == nil && st.Status == containerd.Created {
			_, err = r.client.TaskService().Delete(ctx, &tasks.DeleteTaskRequest{ContainerID: task.ID()})
		}
	}
	return err
}

// killUnlessStopped is containerd.WithProcessKill, except that a process
// that has ended is not killed and a kill that fails on a process that
// has ended or never started is no error (see deleteTask).
func killUnlessStopped(ctx context.Context, p containerd.Process) error {
	status := func() containerd.ProcessStatus {
		st, err := p.Status(ctx)
		if err != nil {
			return containerd.Unknown
		}
		return st.Status
	}
	if status() == containerd.Stopped {
		return nil
	}
	if err := containerd.WithProcessKill(ctx, p); err != nil {
		if st := status(); st != containerd.Stopped && st != containerd.Created {
			return err
		}
	}
	return nil
}

// runscSpecOpts adapt a sandbox's spec to s's runtime; runc needs none.
func runscSpecOpts(s Spec) []oci.SpecOpts {
	if s.Runtime != ociruntime.Runsc {
		return nil
	}
	return []oci.SpecOpts{withClone3Allowed, withoutUserNamespace}
}

// withoutUserNamespace leaves the user namespace to runsc. With one in the
// spec, this runsc's sandbox fails to boot ("error setting up chroot: error
// converting mounts: operation not permitted"); without, it starts the
// Sentry in a user namespace of its own that maps only host uid and gid
// 65534 (nobody), with no capabilities outside it. The program's ids are
// the Sentry's to serve, and what it writes in /tmp stays in the Sentry's
// memory, but every runsc sandbox's Sentry is the same host nobody.
func withoutUserNamespace(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	if s.Linux == nil {
		return nil
	}
	s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Type == specs.UserNamespace })
	s.Linux.UIDMappings, s.Linux.GIDMappings = nil, nil
	return nil
}

// withClone3Allowed lets clone3 through the seccomp profile under runsc.
// The default profile refuses clone3 with ENOSYS, so that glibc falls back
// to clone, whose flags the profile can check. This runsc's seccomp
// (--oci-seccomp) answers every refusal with EPERM whatever errnoRet says,
// and glibc does not fall back on EPERM: every thread node starts would
// fail ("uv_thread_create" assertion). Debian bookworm's Sentry does not
// implement clone3 and answers ENOSYS itself (checked with runsc
// --strace), so allowing it gives glibc what the profile meant; every other
// rule still applies.
func withClone3Allowed(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	if s.Linux == nil || s.Linux.Seccomp == nil {
		return errors.New("allow clone3: the spec has no seccomp profile")
	}
	for i, r := range s.Linux.Seccomp.Syscalls {
		if r.Action == specs.ActErrno && len(r.Names) == 1 && r.Names[0] == "clone3" {
			s.Linux.Seccomp.Syscalls[i] = specs.LinuxSyscall{Names: r.Names, Action: specs.ActAllow}
			return nil
		}
	}
	s.Linux.Seccomp.Syscalls = append(s.Linux.Seccomp.Syscalls, specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActAllow})
	return nil
}
