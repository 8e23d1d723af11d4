//go:build integration

package decisionlisten

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/credentials/insecure"
)

// helperEnv makes the test binary a helper that dials the socket it names
// and prints what became of a health check.
const helperEnv = "SANDPIT_DECISION_DIAL_HELPER"

// TestDialHelper is the helper; it does nothing in an ordinary run.
func TestDialHelper(t *testing.T) {
	target := os.Getenv(helperEnv)
	if target == "" {
		t.Skip("only a helper of TestOnlyTheProxysUIDOpensTheSocket")
	}
	if err := check(t, target, insecure.NewCredentials()); err != nil {
		fmt.Println("refused:", err)
		return
	}
	fmt.Println("admitted")
}

// TestOnlyTheProxysUIDOpensTheSocket, as root, with the proxy's user
// nobody: a process of another uid cannot connect (the socket's mode and
// owner refuse it), the proxy's uid is admitted, and root, whom the file
// mode lets through, is refused by the peer check.
func TestOnlyTheProxysUIDOpensTheSocket(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run processes as other users")
	}
	const proxyUID, strangerUID = 65534, 65533
	// A directory everyone may enter, holding the socket and a copy of
	// this binary the other users may run.
	dir, err := os.MkdirTemp("", "decisionlisten")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := copyExecutable(t, filepath.Join(dir, "helper"))

	reg := prometheus.NewRegistry()
	l, err := Listen(Config{Address: "unix://" + filepath.Join(dir, "decision.sock"), ProxyUID: proxyUID}, reg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, l)

	dialAs := func(uid uint32) string {
		cmd := exec.Command(bin, "-test.run=^TestDialHelper$", "-test.v")
		cmd.Env = []string{helperEnv + "=" + l.Target(), "HOME=/"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper as uid %d: %v\n%s", uid, err, out)
		}
		return string(out)
	}
	if out := dialAs(strangerUID); !strings.Contains(out, "refused:") || !strings.Contains(out, "permission denied") {
		t.Errorf("uid %d: %s; want refused by the socket's mode (permission denied)", strangerUID, out)
	}
	if n := refused(t, reg, reasonPeerUID); n != 0 {
		t.Errorf("%v refusals by the peer check, want 0: the file mode stops uid %d first", n, strangerUID)
	}
	if out := dialAs(proxyUID); !strings.Contains(out, "admitted") {
		t.Errorf("the proxy's uid %d: %s; want admitted", proxyUID, out)
	}
	if err := check(t, l.Target(), insecure.NewCredentials()); err == nil {
		t.Error("root, not the proxy's user, was admitted")
	}
	if n := refused(t, reg, reasonPeerUID); n < 1 {
		t.Errorf("root's refusal was not counted (%v)", n)
	}
}

// copyExecutable copies this test binary to path, runnable by everyone.
func copyExecutable(t *testing.T, path string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}
