// Package sandbox runs one program in a fresh, hardened containerd container
// and removes every trace of it afterwards.
package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
)

// ErrImageNotFound is returned when an image is not in containerd (and
// was not to be pulled); ErrImagePull when it was and could not be.
var (
	ErrImageNotFound = errors.New("image not found")
	ErrImagePull     = errors.New("image pull failed")
)

// LocalRepository names the images sandpit builds and imports itself:
// they are never pulled.
const LocalRepository = "sandpit.local/"

// Config says how the Runtime reaches containerd and what it runs.
type Config struct {
	// Address is containerd's socket.
	Address string
	// Namespace is the containerd namespace the executor owns.
	Namespace string
	// Snapshotter unpacks images and holds the sandboxes' root views.
	Snapshotter string
	// RuncPath is the runc binary the runc v2 shim runs.
	RuncPath string
	// RunscPath is gVisor's runsc; when empty or absent, sandboxes cannot
	// run under runsc (see Installed).
	RunscPath string
	// RunscPlatform is runsc's --platform: RunscPlatformPtrace (the
	// default) or RunscPlatformKVM.
	RunscPlatform string
	// StateDir holds per-execution host files (the code directories).
	StateDir string
	// UID and GID the program runs as; never 0 (and below UserNSSize with
	// HostIDs).
	UID, GID uint32
	// InitPath is the init in the image that runs node as its child and
	// reaps orphans (tini); empty makes node PID 1.
	InitPath string
	// HostIDs, when set, gives each sandbox a user namespace of its own
	// with one of its ranges; nil runs sandboxes in the host's.
	HostIDs *HostIDs
	// PullTimeout, when positive, has an image that is not in containerd
	// (and not under LocalRepository) pulled from its registry, within
	// this long; zero never pulls.
	PullTimeout time.Duration
}

// Runtime creates sandboxes through containerd.
type Runtime struct {
	client  *containerd.Client
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	runsc   runscLaunchers

	mu sync.Mutex
	// live holds the ids of executions inside Run; Reap leaves them alone.
	live map[string]bool
	// dirty is set when a cleanup failed, so Reap has work.
	dirty bool
}

// New connects to containerd and checks what every sandbox depends on.
// m counts cleanup failures and stuck sandboxes; nil counts nowhere.
func New(ctx context.Context, cfg Config, m *Metrics, log *slog.Logger) (*Runtime, error) {
	if cfg.UID == 0 || cfg.GID == 0 {
		return nil, errors.New("new runtime: sandbox uid and gid must not be 0")
	}
	if cfg.HostIDs != nil && (cfg.UID >= UserNSSize || cfg.GID >= UserNSSize) {
		return nil, fmt.Errorf("new runtime: sandbox uid and gid must be below %d in a user namespace", UserNSSize)
	}
	if _, err := os.Stat(cfg.RuncPath); err != nil {
		return nil, fmt.Errorf("new runtime: runc binary: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "executions"), 0o711); err != nil {
		return nil, fmt.Errorf("new runtime: state dir: %w", err)
	}
	client, err := containerd.New(cfg.Address, containerd.WithDefaultNamespace(cfg.Namespace), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w", cfg.Address, err)
	}
	if _, err := client.Version(ctx); err != nil {
		client.Close()
		return nil, fmt.Errorf("connect to containerd at %s: %w", cfg.Address, err)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Runtime{client: client, cfg: cfg, log: log, metrics: m, runsc: newRunsc(cfg), live: map[string]bool{}}, nil
}

func (r *Runtime) enter(id string) {
	r.mu.Lock()
	r.live[id] = true
	r.mu.Unlock()
}

func (r *Runtime) leave(id string) {
	r.mu.Lock()
	delete(r.live, id)
	r.mu.Unlock()
}

// cleanupFailed records that step of a sandbox's removal failed; Reap
// tries again.
func (r *Runtime) cleanupFailed(step string, log *slog.Logger, err error) {
	log.Error("sandbox cleanup failed; left for the reaper", "step", step, "error", err)
	r.metrics.CleanupFailures.WithLabelValues(step).Inc()
	r.mu.Lock()
	r.dirty = true
	r.mu.Unlock()
}

// stuck records that a sandbox did not end within the bound of stage.
func (r *Runtime) stuck(stage string, log *slog.Logger) {
	log.Error("sandbox did not end in time", "stage", stage)
	r.metrics.Stuck.WithLabelValues(stage).Inc()
}

// lost reports whether err, or containerd's silence right after it, says
// that containerd went away.
func (r *Runtime) lost(ctx context.Context, err error) bool {
	if errdefs.IsUnavailable(err) {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, verr := r.client.Version(ctx)
	return verr != nil
}

// Close closes the connection to containerd.
func (r *Runtime) Close() error { return r.client.Close() }

// Healthy reports whether containerd answers.
func (r *Runtime) Healthy(ctx context.Context) error {
	_, err := r.client.Version(r.ns(ctx))
	return err
}

func (r *Runtime) ns(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.cfg.Namespace)
}

// LabelNodeVersion is the image config label holding the Node.js version the
// image carries ("24.21.0"), as deploy/image sets it.
const LabelNodeVersion = "run.sandpit.node.version"

// Image is an image resolved in containerd and unpacked for the snapshotter.
type Image struct {
	Ref    string
	Digest string
	// NodeVersion is the image's LabelNodeVersion, empty when it has none.
	NodeVersion string
	image       containerd.Image
}

// ResolveImage finds ref in containerd and unpacks it if needed.
func (r *Runtime) ResolveImage(ctx context.Context, ref string) (Image, error) {
	ctx = r.ns(ctx)
	img, err := r.client.GetImage(ctx, ref)
	if errdefs.IsNotFound(err) && r.cfg.PullTimeout > 0 && !strings.HasPrefix(ref, LocalRepository) {
		img, err = r.pull(ctx, ref)
		if err != nil {
			return Image{}, err
		}
	}
	if errdefs.IsNotFound(err) {
		return Image{}, fmt.Errorf("resolve image %s: %w", ref, ErrImageNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("resolve image %s: %w", ref, err)
	}
	ok, err := img.IsUnpacked(ctx, r.cfg.Snapshotter)
	if err != nil {
		return Image{}, fmt.Errorf("resolve image %s: %w", ref, err)
	}
	if !ok {
		if err := img.Unpack(ctx, r.cfg.Snapshotter); err != nil {
			return Image{}, fmt.Errorf("unpack image %s: %w", ref, err)
		}
	}
	cfg, err := img.Spec(ctx)
	if err != nil {
		return Image{}, fmt.Errorf("read image config %s: %w", ref, err)
	}
	return Image{Ref: ref, Digest: img.Target().Digest.String(), NodeVersion: cfg.Config.Labels[LabelNodeVersion], image: img}, nil
}

// pull fetches ref from its registry (plain HTTP only for localhost and
// loopback registries) and unpacks it, within PullTimeout.
func (r *Runtime) pull(ctx context.Context, ref string) (containerd.Image, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PullTimeout)
	defer cancel()
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, config.HostOptions{DefaultScheme: "https"})})
	if host := strings.SplitN(ref, "/", 2)[0]; isLoopbackHost(host) {
		resolver = docker.NewResolver(docker.ResolverOptions{PlainHTTP: true})
	}
	img, err := r.client.Pull(ctx, ref, containerd.WithPullUnpack, containerd.WithPullSnapshotter(r.cfg.Snapshotter), containerd.WithResolver(resolver),
		containerd.WithPlatform("linux/amd64"))
	if err != nil {
		return nil, fmt.Errorf("pull image %s: %w: %w", ref, ErrImagePull, err)
	}
	return img, nil
}

// isLoopbackHost reports whether a registry host (host or host:port) is
// this machine's loopback, which serves plain HTTP.
func isLoopbackHost(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Spec is one execution's program and limits.
type Spec struct {
	Image      Image
	NodePath   string
	Files      []File
	Entrypoint string
	Args       []string
	// Env is the complete environment, KEY=value.
	Env    []string
	Stdin  []byte
	Limits limits.Set
	Labels map[string]string
	// Runtime is the OCI runtime the sandbox runs under; empty is runc.
	Runtime ociruntime.Name
	// Network, when set, connects the sandbox's network namespace (loopback
	// only until then): it is called with the namespace's path
	// (/proc/PID/ns/net of the sandbox's first process) once the sandbox's
	// namespaces exist, before the program starts.
	Network func(netnsPath string) error
	// NodeFlags are node's options, before the entrypoint (--require of
	// a script the executor provides).
	NodeFlags []string
	// ExtraFiles are placed read-only at their absolute Path in the
	// sandbox (resolv.conf, the proxy's CA bundle).
	ExtraFiles []File
	// Stdout and Stderr receive the program's output as it is written.
	Stdout, Stderr io.Writer
}

// Outcome is how a sandbox ended.
type Outcome struct {
	ExitCode int32
	// Signal is the signal that ended node, 0 if it exited.
	Signal   syscall.Signal
	TimedOut bool
	// Killed is true when the sandbox was killed because its context ended.
	Killed   bool
	WallTime time.Duration
	Usage    Usage
}

// NewID returns a fresh execution id, usable as a container id.
func NewID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "x" + hex.EncodeToString(b)
}

// Bounds on every wait of a sandbox's end, so that a kill that does not land,
// a shim that never reports the exit or output that never drains cannot hold
// an execution (and its capacity slot and network) forever.
const (
	// killTimeout bounds the Kill call and then the wait for the exit it
	// causes.
	killTimeout = 10 * time.Second
	// drainTimeout bounds waiting for the output copy after the exit.
	drainTimeout = 5 * time.Second
	// cleanupTimeout bounds each containerd call of the cleanup.
	cleanupTimeout = 30 * time.Second
)

// ErrContainerdUnavailable is wrapped by Run's error when containerd went
// away during the execution (crashed, restarted, upgraded); the sandbox's
// remains are removed once it is back (see Reap).
var ErrContainerdUnavailable = errors.New("containerd unavailable")

// ErrStuck is wrapped by Run's error when the sandbox did not end within the
// bounds above.
var ErrStuck = errors.New("sandbox did not end in time")

// Run runs spec in a new sandbox named id. started is called once the sandbox
// exists, just before the program starts. The sandbox is killed when the
// timeout passes or ctx ends. Run returns after the program exited, its
// output was drained and its container, task, snapshot and code directory are
// gone; every wait for that is bounded, and what could not be removed
// (containerd gone, say) is left for Reap.
func (r *Runtime) Run(ctx context.Context, id string, spec Spec, started func()) (out Outcome, err error) {
	ctx = r.ns(ctx)
	// Cleanup must run even when the caller has gone.
	cleanupCtx := context.WithoutCancel(ctx)
	log := r.log.With("execution_id", id)
	r.enter(id)
	defer r.leave(id)
	defer func() {
		if err != nil && !errors.Is(err, ErrContainerdUnavailable) && r.lost(cleanupCtx, err) {
			err = fmt.Errorf("%w: %w", ErrContainerdUnavailable, err)
		}
	}()

	execDir := filepath.Join(r.cfg.StateDir, "executions", id)
	if err := os.Mkdir(execDir, 0o711); err != nil {
		return out, fmt.Errorf("create execution dir: %w", err)
	}
	defer func() {
		if rmErr := os.RemoveAll(execDir); rmErr != nil {
			r.cleanupFailed("code_dir", log, rmErr)
		}
	}()
	codeDir := filepath.Join(execDir, "code")
	if err := writeCode(codeDir, spec.Files); err != nil {
		return out, err
	}
	extra, err := writeExtraFiles(filepath.Join(execDir, "extra"), spec.ExtraFiles)
	if err != nil {
		return out, err
	}

	// kept is set when the container or task could not be removed.
	var kept bool
	var hostID uint32
	if r.cfg.HostIDs != nil {
		var release func()
		if hostID, release, err = r.cfg.HostIDs.Take(); err != nil {
			return out, err
		}
		// Freed only once the sandbox is certainly gone: a range whose
		// processes may still run is never given to another sandbox.
		defer func() {
			if !kept {
				release()
			}
		}()
	}

	cgroupPath := path.Join("/", r.cfg.Namespace, id)
	labels := map[string]string{LabelManaged: "true", LabelExecution: id}
	for k, v := range spec.Labels {
		labels[LabelUserPrefix+k] = v
	}
	container, err := r.client.NewContainer(ctx, id,
		containerd.WithContainerLabels(labels),
		containerd.WithSnapshotter(r.cfg.Snapshotter),
		containerd.WithNewSnapshotView(id, spec.Image.image, snapshots.WithLabels(map[string]string{LabelManaged: "true"})),
		r.withRuntime(spec),
		containerd.WithNewSpec(append(specOpts(spec, r.cfg, hostID, cgroupPath, codeDir, extra), runscSpecOpts(spec)...)...),
	)
	if err != nil {
		return out, fmt.Errorf("create container: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(cleanupCtx, cleanupTimeout)
		defer cancel()
		if delErr := container.Delete(dctx, containerd.WithSnapshotCleanup); delErr != nil && !errdefs.IsNotFound(delErr) {
			r.cleanupFailed("container", log, delErr)
			kept = true
		}
	}()

	var stdin io.Reader
	stdinSent := make(chan struct{})
	if len(spec.Stdin) > 0 {
		stdin = &closeOnEOF{r: bytes.NewReader(spec.Stdin), eof: stdinSent}
	}
	task, err := container.NewTask(ctx, cio.NewCreator(cio.WithStreams(stdin, spec.Stdout, spec.Stderr)))
	if err != nil {
		return out, fmt.Errorf("create task: %w%s", err, r.createHint(err, hostID))
	}
	// Deferred first, so it runs last: a Delete that failed leaves the
	// output copy running, and closing the FIFOs is what ends it.
	defer closeIO(task.IO(), log)
	defer func() {
		dctx, cancel := context.WithTimeout(cleanupCtx, cleanupTimeout)
		defer cancel()
		if delErr := r.deleteTask(dctx, task); delErr != nil && !errdefs.IsNotFound(delErr) {
			r.cleanupFailed("task", log, delErr)
			kept = true
		}
	}()

	if spec.Network != nil {
		if err := spec.Network(fmt.Sprintf("/proc/%d/ns/net", task.Pid())); err != nil {
			return out, err
		}
	}
	// Wait before Start, so that an exit right after start is not missed.
	exitCh, err := task.Wait(cleanupCtx)
	if err != nil {
		return out, fmt.Errorf("wait task: %w", err)
	}
	started()
	begin := time.Now()
	if err := task.Start(ctx); err != nil {
		// runsc reports a missing init here rather than at create.
		return out, fmt.Errorf("start task: %w%s", err, r.createHint(err, hostID))
	}

	exited := make(chan struct{})
	stdinClosed := make(chan struct{})
	if stdin == nil {
		close(stdinClosed)
	} else {
		// The shim keeps the process's stdin open until told to close it,
		// so the program would never see EOF otherwise.
		go func() {
			defer close(stdinClosed)
			select {
			case <-stdinSent:
				cctx, cancel := context.WithTimeout(cleanupCtx, cleanupTimeout)
				defer cancel()
				if err := task.CloseIO(cctx, containerd.WithStdinCloser); err != nil && !errdefs.IsNotFound(err) {
					log.Warn("close stdin", "error", err)
				}
			case <-exited:
			}
		}()
	}

	timer := time.NewTimer(spec.Limits.Timeout)
	defer timer.Stop()
	var status containerd.ExitStatus
	select {
	case status = <-exitCh:
	case <-timer.C:
		out.TimedOut = true
		status, err = r.killAndWait(cleanupCtx, task, exitCh, log)
	case <-ctx.Done():
		out.Killed = true
		status, err = r.killAndWait(cleanupCtx, task, exitCh, log)
	}
	out.WallTime = time.Since(begin)
	close(exited)
	<-stdinClosed
	if err != nil {
		return out, err
	}
	if err := status.Error(); err != nil {
		return out, fmt.Errorf("wait task: %w", err)
	}
	code := status.ExitCode()
	out.ExitCode = int32(code)
	if code > 128 && code < 128+65 {
		out.Signal = syscall.Signal(code - 128)
	}

	// The PID namespace ends with node, so the pipes close and the copy
	// finishes; the bound only guards against a stuck shim.
	if !waitIO(task.IO(), drainTimeout) {
		r.stuck("drain", log)
		task.IO().Cancel()
	}

	usage, err := readUsage(cgroupPath)
	if err != nil {
		log.Warn("read cgroup usage", "error", err)
	}
	out.Usage = usage
	return out, nil
}

// createHint says what an operator can do about a task that could not be
// created for a reason of the host's set-up, or nothing.
func (r *Runtime) createHint(err error, hostID uint32) string {
	msg := err.Error()
	switch {
	case hostID != 0 && strings.Contains(msg, "rootfs") && strings.Contains(msg, "permission denied"):
		return fmt.Sprintf(" (the sandbox's user namespace root, host uid %d, must be able to reach its root filesystem: "+
			"containerd's state directory, /run/containerd by default, and its parents must be searchable by others, mode 0711)", hostID)
	case r.cfg.InitPath != "" && strings.Contains(msg, r.cfg.InitPath) && strings.Contains(msg, "no such file"):
		return fmt.Sprintf(" (the image has no %s: build it with deploy/image, or run the executor with --init \"\" to make node PID 1)", r.cfg.InitPath)
	}
	return ""
}

// killAndWait kills every process of the task and waits, bounded, for the
// exit the kill causes.
func (r *Runtime) killAndWait(ctx context.Context, task containerd.Task, exitCh <-chan containerd.ExitStatus, log *slog.Logger) (containerd.ExitStatus, error) {
	r.kill(ctx, task, log)
	select {
	case st := <-exitCh:
		return st, nil
	case <-time.After(killTimeout):
		r.stuck("kill", log)
		return containerd.ExitStatus{}, fmt.Errorf("%w: no exit %s after SIGKILL", ErrStuck, killTimeout)
	}
}

// waitIO waits up to d for the output copy to finish.
func waitIO(io cio.IO, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		io.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// closeIO closes the task's FIFOs, which ends a copy still running, and
// waits for it, bounded. A successful task Delete has closed them already.
func closeIO(io cio.IO, log *slog.Logger) {
	if io == nil {
		return
	}
	io.Cancel()
	_ = io.Close()
	if !waitIO(io, drainTimeout) {
		log.Error("output copy still running after its FIFOs were closed")
	}
}

// kill sends SIGKILL to every process of the task on a fresh, bounded context,
// so that a cancelled caller cannot stop the kill.
func (r *Runtime) kill(ctx context.Context, task containerd.Task, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, killTimeout)
	defer cancel()
	if err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		log.Error("kill task", "error", err)
	}
}

// closeOnEOF closes eof when r is drained.
type closeOnEOF struct {
	r    io.Reader
	eof  chan struct{}
	once sync.Once
}

func (c *closeOnEOF) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF {
		c.once.Do(func() { close(c.eof) })
	}
	return n, err
}
