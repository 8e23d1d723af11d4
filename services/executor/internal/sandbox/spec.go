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

	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
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
// code read-only, its own namespaces (network: loopback only until
// Spec.Network connects it; user: ids 0-65535 mapped from hostID, unless
// hostID is 0) and cgroup limits for memory without swap, CPU, pids and
// open files. With cfg.InitPath node runs as the init's child. A TypeScript
// entrypoint gets the flag its image's node needs to strip types.
func specOpts(s Spec, cfg Config, hostID uint32, cgroupPath, codeHostDir string, extra []specs.Mount) []oci.SpecOpts {
	var argv []string
	if cfg.InitPath != "" {
		// `--` ends the init's options, so node's are node's.
		argv = append(argv, cfg.InitPath, "--")
	}
	argv = append(argv, s.NodePath)
	argv = append(argv, s.NodeFlags...)
	argv = append(argv, typeScriptFlags(s.Image.NodeVersion, s.Entrypoint)...)
	argv = append(argv, path.Join(CodeDir, s.Entrypoint))
	argv = append(argv, s.Args...)
	l := s.Limits
	opts := []oci.SpecOpts{
		oci.WithProcessArgs(argv...),
		oci.WithProcessCwd(CodeDir),
		withEnv(s.Env),
		oci.WithHostname("sandbox"),
		oci.WithUIDGID(cfg.UID, cfg.GID),
		withNoCapabilities,
		oci.WithNoNewPrivileges,
		seccomp.WithDefaultProfile(),
		withoutSyscalls(RefusedSyscalls...),
		withMaskedPaths(MaskedPaths...),
		oci.WithRootFSReadonly(),
		withoutMounts("/dev/shm", "/dev/mqueue", "/dev/pts", "/run"),
		oci.WithMounts([]specs.Mount{
			{
				Destination: TmpDir,
				Type:        "tmpfs",
				Source:      "tmpfs",
				Options:     []string{"nosuid", "nodev", "noexec", "mode=1777", fmt.Sprintf("size=%d", l.TmpBytes), fmt.Sprintf("nr_inodes=%d", TmpInodes(l))},
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
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace}),
		oci.WithCgroup(cgroupPath),
		oci.WithMemoryLimit(l.MemoryBytes),
		withSwapLimit(l.MemoryBytes),
		oci.WithCPUCFS(cpuQuota(l), cpuPeriod),
		oci.WithPidsLimit(int64(l.Pids)),
		withRlimits(rlimits(l)),
		withOOMScoreAdj(1000),
	}
	if hostID != 0 {
		ids := []specs.LinuxIDMapping{{ContainerID: 0, HostID: hostID, Size: UserNSSize}}
		opts = append(opts, oci.WithUserNamespace(ids, ids))
	}
	return opts
}

// withEnv sets the environment to exactly env, dropping the defaults.
func withEnv(env []string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Process.Env = slices.Clone(env)
		return nil
	}
}

// RefusedSyscalls are allowed by containerd's default seccomp profile but
// refused in a sandbox, as node never makes them: ptrace and the
// cross-process memory calls (reading or writing another process of the
// sandbox), and personality (changing the execution domain, which has
// helped kernel exploits). The default profile already refuses, without
// capabilities, keyctl, add_key, request_key, userfaultfd,
// perf_event_open, bpf and the io_uring calls: node 24's libuv tries
// io_uring_setup when it starts and uses epoll when refused.
var RefusedSyscalls = []string{"ptrace", "process_vm_readv", "process_vm_writev", "personality"}

// withoutSyscalls takes names out of every rule of the seccomp profile
// (applied after it), so the profile's default action refuses them.
func withoutSyscalls(names ...string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil || s.Linux.Seccomp == nil {
			return fmt.Errorf("refuse syscalls: the spec has no seccomp profile")
		}
		rules := s.Linux.Seccomp.Syscalls[:0]
		for _, r := range s.Linux.Seccomp.Syscalls {
			r.Names = slices.DeleteFunc(slices.Clone(r.Names), func(n string) bool { return slices.Contains(names, n) })
			if len(r.Names) > 0 {
				rules = append(rules, r)
			}
		}
		s.Linux.Seccomp.Syscalls = rules
		return nil
	}
}

// MaskedPaths are hidden in a sandbox on top of containerd's defaults
// (/proc/kcore, /proc/keys, /proc/timer_list, /proc/sched_debug,
// /sys/firmware, /sys/devices/virtual/powercap, ...): a file reads as
// empty, a directory as an empty read-only directory. Each is host-wide
// and says what other tenants do (interrupt, scheduler, pressure, lock,
// disk and memory-zone counters; the host's kernel command line, modules
// and key users), and node reads none of them: os.cpus() reads /proc/stat
// and /proc/cpuinfo, os.totalmem() and os.freemem() /proc/meminfo,
// os.loadavg() and os.uptime() sysinfo(2), process.memoryUsage()
// /proc/self, os.availableParallelism() the affinity mask, and libuv the
// sandbox's own cgroup under /sys/fs/cgroup.
var MaskedPaths = []string{
	"/proc/interrupts", "/proc/softirqs", "/proc/pressure", "/proc/schedstat",
	"/proc/locks", "/proc/diskstats", "/proc/vmstat", "/proc/zoneinfo",
	"/proc/buddyinfo", "/proc/pagetypeinfo", "/proc/slabinfo", "/proc/vmallocinfo",
	"/proc/cmdline", "/proc/modules", "/proc/kallsyms", "/proc/key-users",
	"/proc/partitions", "/proc/swaps", "/proc/iomem", "/proc/ioports",
	"/sys/kernel", "/sys/module", "/sys/block", "/sys/class/block", "/sys/devices/virtual/block",
}

// withMaskedPaths adds paths to the spec's masked paths.
func withMaskedPaths(paths ...string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		for _, p := range paths {
			if !slices.Contains(s.Linux.MaskedPaths, p) {
				s.Linux.MaskedPaths = append(s.Linux.MaskedPaths, p)
			}
		}
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

// Fixed rlimits of every sandbox (soft and hard alike).
const (
	// RlimitMemlock is the kernel's own default: node locks no memory.
	RlimitMemlock = 64 << 10
	// RlimitSigpending bounds queued signals; the kernel counts them per
	// host uid, which sandboxes share, so the default (the host's, tens
	// of thousands) would let one sandbox take them all.
	RlimitSigpending = 1024
	// RlimitStack is the usual 8 MiB main-thread stack.
	RlimitStack = 8 << 20
	// fsizeSlack is what RLIMIT_FSIZE allows beyond /tmp's size: a file
	// can never reach the limit (/tmp is the only writable filesystem,
	// and it is full first), so a write ends in ENOSPC, never SIGXFSZ.
	fsizeSlack = 1 << 20
)

// unlimited is RLIM_INFINITY.
const unlimited = ^uint64(0)

// rlimits are the sandbox's rlimits, all but one set here rather than
// inherited from the shim: open files as limited; no core dumps, POSIX
// message queues (node uses none, and /dev/mqueue is not mounted),
// real-time or raised priority, or locked memory beyond the kernel's
// default; a bounded signal queue; the usual stack; no file larger than
// /tmp could hold. Memory and CPU time are unlimited here because cgroups
// and the timeout bound them per sandbox (and V8 reserves far more address
// space than it uses). RLIMIT_NPROC alone stays the host's: it counts the
// processes of a host uid, which sandboxes share, so any bound low enough
// to matter would let one sandbox starve the others, and raising it needs
// a capability the sandbox does not have; the pids cgroup bounds each
// sandbox instead.
func rlimits(l limits.Set) []specs.POSIXRlimit {
	set := func(kind string, n uint64) specs.POSIXRlimit { return specs.POSIXRlimit{Type: kind, Hard: n, Soft: n} }
	return []specs.POSIXRlimit{
		set("RLIMIT_NOFILE", uint64(l.OpenFiles)),
		set("RLIMIT_CORE", 0),
		set("RLIMIT_MEMLOCK", RlimitMemlock),
		set("RLIMIT_SIGPENDING", RlimitSigpending),
		set("RLIMIT_MSGQUEUE", 0),
		set("RLIMIT_STACK", RlimitStack),
		set("RLIMIT_FSIZE", l.TmpBytes+fsizeSlack),
		set("RLIMIT_RTPRIO", 0),
		set("RLIMIT_NICE", 0),
		set("RLIMIT_RTTIME", unlimited), // meaningless with RTPRIO 0
		set("RLIMIT_AS", unlimited),
		set("RLIMIT_DATA", unlimited),
		set("RLIMIT_RSS", unlimited),
		set("RLIMIT_CPU", unlimited),
		set("RLIMIT_LOCKS", unlimited),
	}
}

// withRlimits replaces the spec's rlimits with rl.
func withRlimits(rl []specs.POSIXRlimit) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Process.Rlimits = rl
		return nil
	}
}

// TmpInodes is /tmp's inode limit: one per 4 KiB of its size (what a file
// with any content costs in pages), but at most one per 16 KiB of the
// memory limit (an empty file still costs an inode and a dentry, about
// 1 KiB of kernel memory charged to the sandbox), and at least 64. So
// creating empty files until failure ends in ENOSPC, not an OOM kill.
func TmpInodes(l limits.Set) uint64 {
	return max(min(l.TmpBytes/4096, l.MemoryBytes/(16<<10)), 64)
}

// withOOMScoreAdj makes the sandbox the host OOM killer's first choice.
func withOOMScoreAdj(score int) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Process.OOMScoreAdj = &score
		return nil
	}
}
