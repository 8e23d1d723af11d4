// containerd's default seccomp profile exists only on Linux; elsewhere it is
// empty and the spec below would not be the one a sandbox runs with.

//go:build linux

package sandbox

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
)

// generateSpec builds the spec containerd.WithNewSpec would store for the
// sandbox, without a daemon: none of specOpts' options uses the client. The
// container id and namespace differ from cgroupPath so that containerd's
// default cgroups path cannot pass for the one asked for.
func generateSpec(t *testing.T, s Spec, cfg Config, hostID uint32, cgroupPath, codeHostDir string, extra []specs.Mount) *oci.Spec {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "spec-test")
	spec, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: "spec-test-id"},
		specOpts(s, cfg, hostID, cgroupPath, codeHostDir, extra)...)
	if err != nil {
		t.Fatalf("generate spec: %v", err)
	}
	return spec
}

func TestSpecHardening(t *testing.T) {
	small := limits.Set{
		Timeout:       limits.Floor.Timeout,
		MemoryBytes:   96 * limits.MiB,
		CPUMillicores: 250,
		Pids:          48,
		OutputBytes:   limits.Floor.OutputBytes,
		CodeBytes:     limits.Floor.CodeBytes,
		TmpBytes:      512 * 1024,
		OpenFiles:     200,
	}
	tests := []struct {
		name        string
		spec        Spec
		cgroupPath  string
		codeHostDir string
		extra       []specs.Mount
		uid, gid    uint32
		init        string
		// hostID is the host id of the user namespace's 0; 0 for none.
		hostID uint32
		// wantQuota is spelled out rather than derived so that the
		// millicores-to-quota arithmetic is checked, not repeated.
		wantQuota int64
	}{
		{
			name: "defaults, fresh network namespace",
			spec: Spec{
				NodePath:   "/usr/local/bin/node",
				Entrypoint: "index.js",
				Env:        []string{"HOME=/tmp", "PATH=/usr/local/bin"},
				Limits:     limits.Defaults,
			},
			cgroupPath:  "/sandpit/x1",
			codeHostDir: "/var/lib/sandpit/executions/x1/code",
			uid:         65532,
			gid:         65532,
			init:        "/usr/bin/tini",
			hostID:      1<<31 + 3<<16,
			wantQuota:   100_000,
		},
		{
			name: "small limits, node as PID 1 in the host's user namespace, extra files",
			spec: Spec{
				NodePath:   "/opt/node/bin/node",
				Entrypoint: "src/main.mjs",
				Args:       []string{"--flag", "two words"},
				NodeFlags:  []string{"--import=data:text/javascript;base64,MA=="},
				Env:        []string{"NODE_EXTRA_CA_CERTS=/etc/sandpit/ca.pem", "HOME=/tmp", "PATH=/opt/node/bin", "API_KEY=k"},
				Limits:     small,
			},
			cgroupPath:  "/other/x2",
			codeHostDir: "/srv/sandpit/x2/code",
			extra: []specs.Mount{
				{Destination: "/etc/resolv.conf", Type: "bind", Source: "/srv/sandpit/x2/extra/0", Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}},
				{Destination: "/etc/sandpit/ca.pem", Type: "bind", Source: "/srv/sandpit/x2/extra/1", Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}},
			},
			uid:       231072,
			gid:       231073,
			wantQuota: 25_000,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := generateSpec(t, tt.spec, Config{UID: tt.uid, GID: tt.gid, InitPath: tt.init}, tt.hostID, tt.cgroupPath, tt.codeHostDir, tt.extra)
			l := tt.spec.Limits

			t.Run("process", func(t *testing.T) {
				p := got.Process
				// The init and `--` (if any), node, its flags, the
				// entrypoint, the program's args.
				var initArgs []string
				if tt.init != "" {
					initArgs = []string{tt.init, "--"}
				}
				wantArgs := slices.Concat(initArgs, []string{tt.spec.NodePath}, tt.spec.NodeFlags, []string{"/sandbox/" + tt.spec.Entrypoint}, tt.spec.Args)
				if !slices.Equal(p.Args, wantArgs) {
					t.Errorf("args = %q, want %q", p.Args, wantArgs)
				}
				if p.Cwd != "/sandbox" {
					t.Errorf("cwd = %q, want /sandbox", p.Cwd)
				}
				if !slices.Equal(p.Env, tt.spec.Env) {
					t.Errorf("env = %q, want exactly %q", p.Env, tt.spec.Env)
				}
				if p.User.UID != tt.uid || p.User.GID != tt.gid {
					t.Errorf("user = %d:%d, want %d:%d", p.User.UID, p.User.GID, tt.uid, tt.gid)
				}
				if p.User.UID == 0 || p.User.GID == 0 {
					t.Errorf("user = %d:%d, must not be root", p.User.UID, p.User.GID)
				}
				if !p.NoNewPrivileges {
					t.Error("no_new_privs is off")
				}
				if p.OOMScoreAdj == nil || *p.OOMScoreAdj != 1000 {
					t.Errorf("oom_score_adj = %v, want 1000", deref(p.OOMScoreAdj))
				}
				if got.Hostname != "sandbox" {
					t.Errorf("hostname = %q, want sandbox", got.Hostname)
				}
			})

			t.Run("capabilities", func(t *testing.T) {
				c := got.Process.Capabilities
				if c == nil {
					t.Fatal("capabilities unset: the runtime would apply its own defaults")
				}
				sets := []struct {
					name string
					caps []string
				}{
					{"bounding", c.Bounding},
					{"effective", c.Effective},
					{"permitted", c.Permitted},
					{"inheritable", c.Inheritable},
					{"ambient", c.Ambient},
				}
				for _, set := range sets {
					if set.caps == nil || len(set.caps) != 0 {
						t.Errorf("%s capabilities = %#v, want empty and non-nil", set.name, set.caps)
					}
				}
			})

			t.Run("rlimits", func(t *testing.T) {
				rlimits := []struct {
					kind string
					want uint64
				}{
					{"RLIMIT_NOFILE", uint64(l.OpenFiles)},
					{"RLIMIT_CORE", 0},
					{"RLIMIT_MEMLOCK", 64 << 10},
					{"RLIMIT_SIGPENDING", 1024},
					{"RLIMIT_MSGQUEUE", 0},
					{"RLIMIT_STACK", 8 << 20},
					{"RLIMIT_FSIZE", l.TmpBytes + 1<<20},
					{"RLIMIT_RTPRIO", 0},
					{"RLIMIT_NICE", 0},
					{"RLIMIT_RTTIME", ^uint64(0)},
					{"RLIMIT_AS", ^uint64(0)},
					{"RLIMIT_DATA", ^uint64(0)},
					{"RLIMIT_RSS", ^uint64(0)},
					{"RLIMIT_CPU", ^uint64(0)},
					{"RLIMIT_LOCKS", ^uint64(0)},
				}
				if len(got.Process.Rlimits) != len(rlimits) {
					t.Errorf("rlimits %v, want exactly the %d set on purpose", got.Process.Rlimits, len(rlimits))
				}
				for _, rl := range rlimits {
					var found []specs.POSIXRlimit
					for _, r := range got.Process.Rlimits {
						if r.Type == rl.kind {
							found = append(found, r)
						}
					}
					if len(found) != 1 {
						t.Errorf("%s set %d times (%v), want once", rl.kind, len(found), found)
						continue
					}
					if found[0].Soft != rl.want || found[0].Hard != rl.want {
						t.Errorf("%s = soft %d hard %d, want %d for both", rl.kind, found[0].Soft, found[0].Hard, rl.want)
					}
				}
			})

			t.Run("root", func(t *testing.T) {
				if got.Root == nil || !got.Root.Readonly {
					t.Errorf("root = %+v, want read-only", got.Root)
				}
			})

			t.Run("seccomp", func(t *testing.T) {
				sc := got.Linux.Seccomp
				if sc == nil {
					t.Fatal("no seccomp profile")
				}
				if sc.DefaultAction != specs.ActErrno {
					t.Errorf("seccomp default action = %q, want %q", sc.DefaultAction, specs.ActErrno)
				}
				if len(sc.Syscalls) == 0 {
					t.Error("seccomp profile allows no syscalls: not containerd's default profile")
				}
				// Denied by the default profile to a process without
				// CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_BOOT or
				// CAP_DAC_READ_SEARCH. chroot is allowed only with
				// CAP_SYS_CHROOT, which containerd grants by default:
				// denied here means the profile was computed after the
				// capabilities were dropped.
				for _, name := range []string{
					"mount", "umount2", "unshare", "setns", "bpf", "keyctl", "add_key",
					"request_key", "kexec_load", "init_module", "reboot", "open_by_handle_at", "chroot",
					// Refused on top of the default profile.
					"ptrace", "process_vm_readv", "process_vm_writev", "personality",
					// Refused by it without capabilities, kept so.
					"userfaultfd", "perf_event_open", "io_uring_setup", "io_uring_enter", "io_uring_register",
				} {
					for _, sys := range sc.Syscalls {
						if slices.Contains(sys.Names, name) && sys.Action == specs.ActAllow {
							t.Errorf("seccomp allows %s (rule %+v)", name, sys)
						}
					}
				}
			})

			t.Run("masked paths", func(t *testing.T) {
				for _, p := range append([]string{"/proc/kcore", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware"}, MaskedPaths...) {
					if !slices.Contains(got.Linux.MaskedPaths, p) {
						t.Errorf("%s not masked (masked: %q)", p, got.Linux.MaskedPaths)
					}
				}
				for _, p := range []string{"/proc/stat", "/proc/cpuinfo", "/proc/meminfo", "/sys/fs/cgroup", "/sys/devices/system/cpu"} {
					if slices.Contains(got.Linux.MaskedPaths, p) {
						t.Errorf("%s masked: node reads it", p)
					}
				}
			})

			t.Run("mounts", func(t *testing.T) {
				byDest := map[string][]specs.Mount{}
				for _, m := range got.Mounts {
					byDest[m.Destination] = append(byDest[m.Destination], m)
				}
				one := func(dest string) (specs.Mount, bool) {
					ms := byDest[dest]
					if len(ms) != 1 {
						t.Errorf("%s mounted %d times (%+v), want once", dest, len(ms), ms)
						return specs.Mount{}, false
					}
					return ms[0], true
				}

				mountChecks := []struct {
					dest, typ, source string
					want              []string
				}{
					{"/tmp", "tmpfs", "tmpfs", []string{"nosuid", "nodev", "noexec", "mode=1777", fmt.Sprintf("size=%d", l.TmpBytes), fmt.Sprintf("nr_inodes=%d", TmpInodes(l))}},
					{"/sandbox", "bind", tt.codeHostDir, []string{"ro", "nosuid", "nodev", "noexec"}},
					// containerd's defaults, kept: the sandbox must not get
					// a writable or exec-able /proc or /sys.
					{"/proc", "proc", "proc", []string{"nosuid", "nodev", "noexec"}},
					{"/sys", "sysfs", "sysfs", []string{"ro", "nosuid", "nodev", "noexec"}},
				}
				for _, mc := range mountChecks {
					m, ok := one(mc.dest)
					if !ok {
						continue
					}
					if m.Type != mc.typ || m.Source != mc.source {
						t.Errorf("%s = %s from %q, want %s from %q", mc.dest, m.Type, m.Source, mc.typ, mc.source)
					}
					for _, o := range mc.want {
						if !slices.Contains(m.Options, o) {
							t.Errorf("%s options %q lack %q", mc.dest, m.Options, o)
						}
					}
					for _, o := range []string{"rw", "exec", "suid", "dev"} {
						if slices.Contains(m.Options, o) {
							t.Errorf("%s options %q contain %q", mc.dest, m.Options, o)
						}
					}
				}
				if m, ok := one("/tmp"); ok {
					var sizes []string
					for _, o := range m.Options {
						if strings.HasPrefix(o, "size=") {
							sizes = append(sizes, o)
						}
					}
					if len(sizes) != 1 {
						t.Errorf("/tmp size options = %q, want exactly one", sizes)
					}
				}

				for _, dest := range []string{"/dev/shm", "/dev/mqueue", "/dev/pts", "/run"} {
					if ms := byDest[dest]; len(ms) != 0 {
						t.Errorf("%s mounted (%+v), want absent", dest, ms)
					}
				}

				for _, want := range tt.extra {
					ms := byDest[want.Destination]
					if len(ms) != 1 || ms[0].Type != want.Type || ms[0].Source != want.Source || !slices.Equal(ms[0].Options, want.Options) {
						t.Errorf("extra mount %s = %+v, want exactly %+v", want.Destination, ms, want)
					}
				}
			})

			t.Run("masked and readonly paths", func(t *testing.T) {
				for _, p := range []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/acpi", "/sys/firmware"} {
					if !slices.Contains(got.Linux.MaskedPaths, p) {
						t.Errorf("%s not masked (masked: %q)", p, got.Linux.MaskedPaths)
					}
				}
				for _, p := range []string{"/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/fs", "/proc/irq"} {
					if !slices.Contains(got.Linux.ReadonlyPaths, p) {
						t.Errorf("%s not read-only (read-only: %q)", p, got.Linux.ReadonlyPaths)
					}
				}
			})

			t.Run("namespaces", func(t *testing.T) {
				nsChecks := []struct {
					typ  specs.LinuxNamespaceType
					path string
				}{
					{specs.PIDNamespace, ""},
					{specs.IPCNamespace, ""},
					{specs.UTSNamespace, ""},
					{specs.MountNamespace, ""},
					{specs.CgroupNamespace, ""},
					// Always a fresh one; Spec.Network connects it.
					{specs.NetworkNamespace, ""},
				}
				if n := slices.IndexFunc(got.Linux.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Type == specs.UserNamespace }); (n >= 0) != (tt.hostID != 0) {
					t.Errorf("user namespace listed: %v, want %v (host id %d)", n >= 0, tt.hostID != 0, tt.hostID)
				}
				want := []specs.LinuxIDMapping{{ContainerID: 0, HostID: tt.hostID, Size: 65536}}
				if tt.hostID == 0 {
					want = nil
				}
				if !slices.Equal(got.Linux.UIDMappings, want) || !slices.Equal(got.Linux.GIDMappings, want) {
					t.Errorf("uid mappings %v, gid mappings %v, want both %v", got.Linux.UIDMappings, got.Linux.GIDMappings, want)
				}
				for _, nc := range nsChecks {
					var found []specs.LinuxNamespace
					for _, ns := range got.Linux.Namespaces {
						if ns.Type == nc.typ {
							found = append(found, ns)
						}
					}
					if len(found) != 1 {
						t.Errorf("%s namespace listed %d times (%+v), want once", nc.typ, len(found), got.Linux.Namespaces)
						continue
					}
					if found[0].Path != nc.path {
						t.Errorf("%s namespace path = %q, want %q", nc.typ, found[0].Path, nc.path)
					}
				}
			})

			t.Run("cgroup", func(t *testing.T) {
				if got.Linux.CgroupsPath != tt.cgroupPath {
					t.Errorf("cgroups path = %q, want %q", got.Linux.CgroupsPath, tt.cgroupPath)
				}
				r := got.Linux.Resources
				if r == nil {
					t.Fatal("no cgroup resources")
				}
				if r.Memory == nil {
					t.Error("no memory limits")
				} else {
					if deref(r.Memory.Limit) != int64(l.MemoryBytes) {
						t.Errorf("memory limit = %v, want %d", deref(r.Memory.Limit), l.MemoryBytes)
					}
					if deref(r.Memory.Swap) != int64(l.MemoryBytes) {
						t.Errorf("memory+swap limit = %v, want %d (no swap)", deref(r.Memory.Swap), l.MemoryBytes)
					}
				}
				if r.CPU == nil {
					t.Error("no CPU limits")
				} else {
					if deref(r.CPU.Quota) != tt.wantQuota {
						t.Errorf("CPU quota = %v, want %d", deref(r.CPU.Quota), tt.wantQuota)
					}
					if deref(r.CPU.Period) != 100_000 {
						t.Errorf("CPU period = %v, want 100000", deref(r.CPU.Period))
					}
				}
				if r.Pids == nil || deref(r.Pids.Limit) != int64(l.Pids) {
					t.Errorf("pids = %+v, want limit %d", r.Pids, l.Pids)
				}
				// containerd's default: no device but those the runtime
				// creates itself.
				if len(r.Devices) == 0 || r.Devices[0].Allow || r.Devices[0].Access != "rwm" || (r.Devices[0].Type != "" && r.Devices[0].Type != "a") {
					t.Errorf("device cgroup = %+v, want deny-all first", r.Devices)
				}
			})
		})
	}
}

// deref returns *p, or the zero value when p is nil so that a missing
// limit reports as 0 rather than a panic.
func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func TestTmpInodes(t *testing.T) {
	tests := []struct {
		tmp, memory uint64
		want        uint64
	}{
		{16 << 20, 256 << 20, 4096},     // the defaults: one per 4 KiB of /tmp
		{512 << 20, 2048 << 20, 131072}, // the maxima
		{512 << 20, 64 << 20, 4096},     // a big /tmp in little memory: one per 16 KiB of memory
		{64 << 10, 64 << 20, 64},        // the floor
	}
	for _, tt := range tests {
		if got := TmpInodes(limits.Set{TmpBytes: tt.tmp, MemoryBytes: tt.memory}); got != tt.want {
			t.Errorf("TmpInodes(tmp %d, memory %d) = %d, want %d", tt.tmp, tt.memory, got, tt.want)
		}
	}
}

// TestSpecTypeScriptFlag checks where the type-stripping flag goes: after
// the flags the executor contributes, before the entrypoint, and only for
// a TypeScript entrypoint on a node that needs it.
func TestSpecTypeScriptFlag(t *testing.T) {
	tls := "--import=data:text/javascript;base64,MA=="
	tests := []struct {
		name, version, entrypoint string
		want                      []string
	}{
		{"node 22.12, .ts", "22.12.0", "main.ts", []string{"/usr/local/bin/node", tls, StripTypesFlag, "/sandbox/main.ts", "arg"}},
		{"node 22.23, .ts", "22.23.5", "main.ts", []string{"/usr/local/bin/node", tls, "/sandbox/main.ts", "arg"}},
		{"node 22.12, .js", "22.12.0", "main.js", []string{"/usr/local/bin/node", tls, "/sandbox/main.js", "arg"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Spec{Image: Image{NodeVersion: tt.version}, NodePath: "/usr/local/bin/node", Entrypoint: tt.entrypoint,
				Args: []string{"arg"}, NodeFlags: []string{tls}, Limits: limits.Defaults}
			got := generateSpec(t, s, Config{UID: 65532, GID: 65532}, 0, "/sandpit/x1", "/srv/x1/code", nil)
			if !slices.Equal(got.Process.Args, tt.want) {
				t.Errorf("args = %q, want %q", got.Process.Args, tt.want)
			}
		})
	}
}

// TestSpecIdle: a sandbox booted ahead of time has the least CPU weight;
// one made for an execution keeps the runtime's default.
func TestSpecIdle(t *testing.T) {
	s := Spec{NodePath: "/usr/local/bin/node", Entrypoint: "main.js", Limits: limits.Defaults}
	if got := generateSpec(t, s, Config{UID: 65532, GID: 65532}, 0, "/sandpit/x1", "/srv/x1/code", nil); got.Linux.Resources.CPU.Shares != nil {
		t.Errorf("a cold sandbox has CPU shares %d, want the default", *got.Linux.Resources.CPU.Shares)
	}
	s.Idle = true
	if got := generateSpec(t, s, Config{UID: 65532, GID: 65532}, 0, "/sandpit/x1", "/srv/x1/code", nil); deref(got.Linux.Resources.CPU.Shares) != idleCPUShares {
		t.Errorf("a booting warm sandbox has CPU shares %v, want %d", got.Linux.Resources.CPU.Shares, idleCPUShares)
	}
}
