package sandbox

import (
	"context"
	"fmt"
	"path"
	"slices"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Paths inside the sandbox.
const (
	CodeDir = "/sandbox"
	TmpDir  = "/tmp"
)

// cpuPeriod is the CFS period; the quota is a share of it.
const cpuPeriod = 100_000

// specOpts returns the OCI spec of one sandbox, hardened: an unprivileged
// user with no capabilities and no_new_privs, the default seccomp profile, a
// read-only root, a size-capped noexec /tmp as the only writable place, the
// code read-only, its own namespaces (network: loopback only) and cgroup
// limits for memory without swap, CPU, pids and open files.
func specOpts(s Spec, cgroupPath, codeHostDir string, extra []specs.Mount, uid, gid uint32) []oci.SpecOpts {
	argv := append([]string{s.NodePath}, s.NodeFlags...)
	argv = append(argv, path.Join(CodeDir, s.Entrypoint))
	argv = append(argv, s.Args...)
	l := s.Limits
	return []oci.SpecOpts{
		oci.WithProcessArgs(argv...),
		oci.WithProcessCwd(CodeDir),
		withEnv(s.Env),
		oci.WithHostname("sandbox"),
		oci.WithUIDGID(uid, gid),
		withNoCapabilities,
		oci.WithNoNewPrivileges,
		seccomp.WithDefaultProfile(),
		oci.WithRootFSReadonly(),
		withoutMounts("/dev/shm", "/dev/mqueue", "/dev/pts", "/run"),
		oci.WithMounts([]specs.Mount{
			{
				Destination: TmpDir,
				Type:        "tmpfs",
				Source:      "tmpfs",
				Options:     []string{"nosuid", "nodev", "noexec", "mode=1777", fmt.Sprintf("size=%d", l.TmpBytes)},
			},
			{
				Destination: CodeDir,
				Type:        "bind",
				Source:      codeHostDir,
				Options:     []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
			},
		}),
		oci.WithMounts(extra),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.CgroupNamespace}),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: s.NetNSPath}),
		oci.WithCgroup(cgroupPath),
		oci.WithMemoryLimit(l.MemoryBytes),
		withSwapLimit(l.MemoryBytes),
		oci.WithCPUCFS(int64(l.CPUMillicores)*cpuPeriod/1000, cpuPeriod),
		oci.WithPidsLimit(int64(l.Pids)),
		withRlimit("RLIMIT_NOFILE", uint64(l.OpenFiles)),
		withRlimit("RLIMIT_CORE", 0),
		withOOMScoreAdj(1000),
	}
}

// withEnv sets the environment to exactly env, dropping the defaults.
func withEnv(env []string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Process.Env = slices.Clone(env)
		return nil
	}
}

// withNoCapabilities empties every capability set, ambient included.
func withNoCapabilities(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	s.Process.Capabilities = &specs.LinuxCapabilities{
		Bounding:    []string{},
		Effective:   []string{},
		Permitted:   []string{},
		Inheritable: []string{},
		Ambient:     []string{},
	}
	return nil
}

// withoutMounts removes default mounts the sandbox does not need; each is a
// writable or shared place that would outlive the user's view of /tmp.
func withoutMounts(dests ...string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool {
			return slices.Contains(dests, m.Destination)
		})
		return nil
	}
}

// withSwapLimit sets memory+swap to the memory limit: no swap at all.
func withSwapLimit(limit uint64) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		l := int64(limit)
		s.Linux.Resources.Memory.Swap = &l
		return nil
	}
}

func withRlimit(kind string, n uint64) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Process.Rlimits = slices.DeleteFunc(s.Process.Rlimits, func(r specs.POSIXRlimit) bool { return r.Type == kind })
		s.Process.Rlimits = append(s.Process.Rlimits, specs.POSIXRlimit{Type: kind, Hard: n, Soft: n})
		return nil
	}
}

// withOOMScoreAdj makes the sandbox the host OOM killer's first choice.
func withOOMScoreAdj(score int) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Process.OOMScoreAdj = &score
		return nil
	}
}
