package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// TestIPNetnsOnTheHostLeaksNothing runs `ip netns add` and, later, `ip
// netns del` on the host while executions run (iproute2 turns /run/netns
// into a bind mount of itself the first time, which used to hide the
// executor's namespaces under it: they could not be removed, leaked, and
// the next executor failed to start). No namespace or veth is left, and an
// executor started afterwards serves.
func TestIPNetnsOnTheHostLeaksNothing(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	eg := startEgress(t, ports, "version: 1\ndefault: deny\n")
	foreign := fmt.Sprintf("sandpit-iproute-test-%d", os.Getpid())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", foreign).Run() })
	// during runs fn while an execution is inside its sandbox.
	during := func(e *executor, fn func()) {
		t.Helper()
		stream, err := e.client.Execute(context.Background(), code(`console.log("in"); setTimeout(() => {}, 1500);`))
		if err != nil {
			t.Fatal(err)
		}
		for inside := false; ; {
			ev, err := stream.Recv()
			if err != nil {
				t.Fatalf("the execution ended without a result: %v", err)
			}
			if ev.GetStdout() != nil && !inside {
				inside = true
				fn()
			}
			if r := ev.GetResult(); r != nil {
				if !inside || r.GetExitCode() != 0 || r.GetNetworkError() == "" {
					t.Fatalf("result %v: want exit 0 after the program printed (and no egress: no proxy runs)", r)
				}
				return
			}
		}
	}
	t.Run("first executor", func(t *testing.T) {
		e := startExecutor(t, executorOpts{egress: eg})
		during(e, func() { ip("netns", "add", foreign) })
		requireNoNetworkLeftovers(t)
		during(e, func() { ip("netns", "del", foreign) })
		requireNoNetworkLeftovers(t)
		during(e, func() { ip("netns", "add", foreign) })
	})
	requireNoNetworkLeftovers(t)
	e := startExecutor(t, executorOpts{egress: eg})
	during(e, func() { ip("netns", "del", foreign) })
	requireNoNetworkLeftovers(t)
	requireNoLeftovers(t, stateDir, "")
}
