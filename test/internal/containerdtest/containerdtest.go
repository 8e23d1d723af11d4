// Package containerdtest starts a private containerd for integration tests
// and imports the sandbox image into it. Nothing is mocked: the tests talk to
// the real daemon, the real runc and the real image, and fail (never skip)
// when one of them is missing.
package containerdtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// Namespace is the containerd namespace tests run sandboxes in.
const Namespace = "sandpit-test"

// Env is a running private containerd with the sandbox image imported.
type Env struct {
	Dir      string
	Address  string
	RuncPath string
	// Runtime is the OCI runtime executors run sandboxes under:
	// SANDPIT_RUNTIME, runc by default.
	Runtime string
	// RunscPath is gVisor's runsc: SANDPIT_RUNSC, Debian's by default.
	RunscPath string
	ImageRef  string
	// ImageTar is the archive the image was imported from.
	ImageTar string
	args     []string
	cmd      *exec.Cmd
	exited   chan struct{}
}

func (e *Env) start() error {
	logf, err := os.OpenFile(filepath.Join(e.Dir, "containerd.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	e.cmd = exec.Command(e.args[0], e.args[1:]...)
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := e.cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	e.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(e.cmd, e.exited)
	return nil
}

// Kill kills containerd with SIGKILL, as a crash would, and waits for it to
// be gone. Its shims, and the sandboxes under them, live on.
func (e *Env) Kill() {
	_ = e.cmd.Process.Kill()
	<-e.exited
}

// Restart starts containerd again on the same root, state and socket, and
// waits until it answers.
func (e *Env) Restart(ctx context.Context) error {
	_ = os.Remove(e.Address)
	if err := e.start(); err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := e.Client()
		if err == nil {
			_, err = c.Version(ctx)
			c.Close()
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not answer in 15s after restart: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RepoRoot is the directory holding go.work, found from the working directory
// up.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work above the working directory")
		}
		dir = parent
	}
}

// Artifact returns the path in the environment variable env, or the default
// path relative to the repository root, and fails when no file is there.
func Artifact(env, rel string) (string, error) {
	p := os.Getenv(env)
	if p == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		p = filepath.Join(root, rel)
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s (set %s or run make test, which builds it): %w", p, env, err)
	}
	return p, nil
}

// Start starts containerd in a fresh temporary directory and imports the
// image archive. The caller must call Stop.
func Start(ctx context.Context) (*Env, error) {
	// SANDPIT_CONTAINERD picks another containerd build (2.x, say) to test
	// against; its shim must come first in PATH.
	name := os.Getenv("SANDPIT_CONTAINERD")
	if name == "" {
		name = "containerd"
	}
	bin, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("containerd binary (make test installs Debian's containerd): %w", err)
	}
	runc, err := Artifact("SANDPIT_RUNC", "bin/runc")
	if err != nil {
		return nil, fmt.Errorf("runc: %w", err)
	}
	runtime, runsc, err := runtimeFromEnv()
	if err != nil {
		return nil, err
	}
	tar, err := Artifact("SANDPIT_IMAGE_TAR", "build/sandpit-node.tar")
	if err != nil {
		return nil, fmt.Errorf("image archive: %w", err)
	}
	dir, err := os.MkdirTemp("", "sandpit-ctd-")
	if err != nil {
		return nil, err
	}
	// Searchable by others, as /run/containerd must be: the runtime
	// reaches a sandbox's root filesystem as the sandbox's user namespace
	// root, an unprivileged host user.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	e := &Env{Dir: dir, Address: filepath.Join(dir, "c.sock"), RuncPath: runc, Runtime: runtime, RunscPath: runsc, ImageRef: "sandpit.local/node:24", ImageTar: tar}
	cfg := filepath.Join(dir, "config.toml")
	// The CRI plugin is not used and would only slow start-up and log noise.
	if err := os.WriteFile(cfg, []byte("version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"), 0o644); err != nil {
		return nil, err
	}
	e.args = []string{bin, "--config", cfg, "--root", filepath.Join(dir, "root"), "--state", filepath.Join(dir, "state"), "--address", e.Address}
	if err := e.start(); err != nil {
		return nil, err
	}
	if err := e.importImage(ctx); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
		e.Stop()
		return nil, fmt.Errorf("%w\ncontainerd log:\n%s", err, log)
	}
	return e, nil
}

// runtimeFromEnv reads SANDPIT_RUNTIME and SANDPIT_RUNSC; under runsc the
// binary must be there (make test installs Debian's runsc).
func runtimeFromEnv() (runtime, runsc string, err error) {
	runtime, runsc = os.Getenv("SANDPIT_RUNTIME"), os.Getenv("SANDPIT_RUNSC")
	if runtime == "" {
		runtime = "runc"
	}
	if runsc == "" {
		runsc = "/usr/bin/runsc"
	}
	if _, err := os.Stat(runsc); err != nil && runtime == "runsc" {
		return "", "", fmt.Errorf("runsc (SANDPIT_RUNTIME=runsc; set SANDPIT_RUNSC or apt-get install runsc): %w", err)
	}
	return runtime, runsc, nil
}

// RuntimeFlags are the executor flags that run its sandboxes under the
// tests' runtime.
func (e *Env) RuntimeFlags() []string {
	return []string{"--runc", e.RuncPath, "--runtime", e.Runtime, "--runsc", e.RunscPath}
}

// Client returns a client of the private containerd in Namespace.
func (e *Env) Client() (*containerd.Client, error) {
	return containerd.New(e.Address, containerd.WithDefaultNamespace(Namespace), containerd.WithTimeout(10*time.Second))
}

// ImportImage imports another image archive, which must hold ref.
func (e *Env) ImportImage(ctx context.Context, tar, ref string) error {
	c, err := e.Client()
	if err != nil {
		return err
	}
	defer c.Close()
	return importTar(namespaces.WithNamespace(ctx, Namespace), c, tar, ref)
}

func (e *Env) importImage(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(e.Address); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("containerd did not create its socket in 15s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := e.Client()
	if err != nil {
		return fmt.Errorf("connect to containerd: %w", err)
	}
	defer c.Close()
	return importTar(namespaces.WithNamespace(ctx, Namespace), c, e.ImageTar, e.ImageRef)
}

func importTar(ctx context.Context, c *containerd.Client, tar, ref string) error {
	f, err := os.Open(tar)
	if err != nil {
		return err
	}
	defer f.Close()
	imgs, err := c.Import(ctx, f)
	if err != nil {
		return fmt.Errorf("import %s: %w", tar, err)
	}
	for _, im := range imgs {
		if im.Name == ref {
			return nil
		}
	}
	return fmt.Errorf("import %s: no image named %s in it", tar, ref)
}

// Stop stops containerd, unmounts what it left and removes its directory.
func (e *Env) Stop() {
	if e.cmd != nil && e.cmd.Process != nil {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.exited:
		case <-time.After(10 * time.Second):
			_ = e.cmd.Process.Kill()
			<-e.exited
		}
	}
	for _, m := range MountsUnder(e.Dir) {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
	_ = os.RemoveAll(e.Dir)
}

// MountsUnder lists the mount points of this mount namespace that contain
// s, read from /proc/self/mountinfo.
func MountsUnder(s string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.Contains(f[4], s) {
			out = append(out, f[4])
		}
	}
	return out
}

// WithNamespace puts the tests' containerd namespace on ctx.
func WithNamespace(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, Namespace)
}
