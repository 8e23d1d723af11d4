package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// leftovers lists what executions left behind: containers, tasks, managed
// snapshots, rootfs mounts, processes in sandbox cgroups or shims of the test
// namespace, code directories, and processes whose command line holds marker
// (when set).
func leftovers(t testing.TB, stateDir, marker string) []string {
	t.Helper()
	c, err := env.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), containerdtest.Namespace)
	var out []string
	cs, err := c.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range cs {
		out = append(out, "container "+x.ID())
	}
	tasks, err := c.TaskService().List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range tasks.GetTasks() {
		out = append(out, "task "+x.GetID())
	}
	err = c.SnapshotService("overlayfs").Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		out = append(out, "snapshot "+info.Name)
		return nil
	}, `labels."sandpit.dev/managed"`)
	if err != nil {
		t.Fatal(err)
	}
	// Mounts of this run's containerd and executor only: a test process
	// killed earlier (by a timeout) may have left its own behind, which
	// are not this run's to answer for.
	for _, m := range containerdtest.MountsUnder("/" + containerdtest.Namespace + "/") {
		if strings.HasPrefix(m, env.Dir+"/") || strings.HasPrefix(m, stateDir+"/") {
			out = append(out, "mount "+m)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cg, _ := os.ReadFile(filepath.Join(p, "cgroup"))
		cmd, _ := os.ReadFile(filepath.Join(p, "cmdline"))
		cmdline := strings.ReplaceAll(string(cmd), "\x00", " ")
		switch {
		case strings.Contains(string(cg), "/"+containerdtest.Namespace+"/"):
			out = append(out, "process in a sandbox cgroup "+p+": "+cmdline)
		case strings.Contains(cmdline, "containerd-shim") && strings.Contains(cmdline, "-namespace "+containerdtest.Namespace):
			out = append(out, "shim "+p+": "+cmdline)
		case marker != "" && strings.Contains(cmdline, marker):
			out = append(out, "marked process "+p+": "+cmdline)
		}
	}
	dirs, _ := os.ReadDir(filepath.Join(stateDir, "executions"))
	for _, d := range dirs {
		out = append(out, "code dir "+d.Name())
	}
	return out
}

// requireNoLeftovers fails unless leftovers finds nothing within a few
// seconds (shims exit shortly after their task is deleted).
func requireNoLeftovers(t testing.TB, stateDir, marker string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l := leftovers(t, stateDir, marker)
		if len(l) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind:\n%s", strings.Join(l, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
