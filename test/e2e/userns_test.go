package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

// TestEachSandboxHasItsOwnUserNamespace runs two sandboxes at once. In
// each, /proc/self/uid_map maps the sandbox's ids 0-65535 to 65536 host ids
// from 2^31 (the default --userns-base), and the two ranges differ. Seen
// from the host, each sandbox's processes and the file it wrote in /tmp
// belong to its range's 65532, never to root or to 65532 itself; and
// inside, the program is still uid 65532 and root's files (the image) are
// the overflow id, nobody.
func TestEachSandboxHasItsOwnUserNamespace(t *testing.T) {
	e := startExecutor(t, executorOpts{})
	src := `
const fs = require("fs");
fs.writeFileSync("/tmp/owned", "x");
console.log(JSON.stringify({ map: fs.readFileSync("/proc/self/uid_map", "utf8").trim().split(/\s+/).map(Number),
  uid: process.getuid(), gid: process.getgid(), nodeOwner: fs.statSync(process.execPath).uid, tmpOwner: fs.statSync("/tmp/owned").uid }));
setInterval(() => {}, 1000);
`
	type seen struct {
		Map                 []uint32
		UID, GID, NodeOwner uint32
		TmpOwner            uint32
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var got [2]seen
	var ids [2]string
	for i := range got {
		stream, err := e.client.Execute(ctx, code(src))
		if err != nil {
			t.Fatal(err)
		}
		stdout, started := stdoutUntil(t, stream, "\n")
		ids[i] = started.GetExecutionId()
		if err := json.Unmarshal([]byte(stdout), &got[i]); err != nil {
			t.Fatalf("sandbox %d printed %q: %v", i, stdout, err)
		}
	}

	c, err := env.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nsCtx := namespaces.WithNamespace(ctx, containerdtest.Namespace)
	for i, g := range got {
		if len(g.Map) != 3 || g.Map[0] != 0 || g.Map[2] != 65536 || g.Map[1] < 1<<31 || g.Map[1]%65536 != 0 {
			t.Errorf("sandbox %d: uid_map %v, want 0 -> a 65536-aligned host range from 2^31, 65536 ids", i, g.Map)
			continue
		}
		if g.UID != 65532 || g.GID != 65532 || g.TmpOwner != 65532 || g.NodeOwner != 65534 {
			t.Errorf("sandbox %d inside: uid %d gid %d, /tmp file owner %d, node's owner %d; want 65532, 65532, 65532, 65534 (nobody: host root is not mapped)",
				i, g.UID, g.GID, g.TmpOwner, g.NodeOwner)
		}
		want := g.Map[1] + 65532
		task, err := c.TaskService().Get(nsCtx, &tasks.GetRequest{ContainerID: ids[i]})
		if err != nil {
			t.Fatalf("sandbox %d: task: %v", i, err)
		}
		pid := task.GetProcess().GetPid()
		var st syscall.Stat_t
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/root/tmp/owned", pid), &st); err != nil {
			t.Fatalf("sandbox %d: stat its /tmp file from the host: %v", i, err)
		}
		if st.Uid != want || st.Gid != want {
			t.Errorf("sandbox %d: its /tmp file is %d:%d on the host, want %d:%d", i, st.Uid, st.Gid, want, want)
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		if line := statusLine(string(status), "Uid:"); line != fmt.Sprintf("%d\t%d\t%d\t%d", want, want, want, want) {
			t.Errorf("sandbox %d: PID 1 is host uid %q, want %d", i, line, want)
		}
	}
	if got[0].Map[1] == got[1].Map[1] {
		t.Errorf("both sandboxes map to host ids from %d", got[0].Map[1])
	}
}

func statusLine(status, key string) string {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
