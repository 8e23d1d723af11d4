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

	// teardowns counts the sandboxes being removed in the background,
	// teardownSlots bounds how many at once.
	teardowns     sync.WaitGroup
	teardownSlots chan struct{}

	images imageCache
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
	return &Runtime{client: client, cfg: cfg, log: log, metrics: m, runsc: newRunsc(cfg), live: map[string]bool{},
		teardownSlots: make(chan struct{}, teardownConcurrency)}, nil
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

// Close waits, bounded, for the sandboxes being removed and closes the
// connection to containerd.
func (r *Runtime) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*cleanupTimeout)
	defer cancel()
	if err := r.Drain(ctx); err != nil {
		r.log.Warn("sandboxes still being removed at close; the next start sweeps them", "error", err)
	}
	return r.client.Close()
}

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

// ResolveImage finds ref in containerd and unpacks it if needed. An image
// resolved before is taken from a cache: at no cost while the cache follows
// containerd's image events (WatchImages), which empty it at every change
// of an image in the namespace; else while containerd, asked, still names
// the same digest by ref.
func (r *Runtime) ResolveImage(ctx context.Context, ref string) (Image, error) {
	ctx = r.ns(ctx)
	if img, ok := r.images.watched(ref); ok {
		return img, nil
	}
	meta, err := r.client.ImageService().Get(ctx, ref)
	if err == nil {
		if img, ok := r.images.get(ref, meta.Target.Digest.String()); ok {
			return img, nil
		}
	}
	gen := r.images.generation()
	img, err := r.resolve(ctx, ref)
	if err == nil {
		r.images.put(img, gen)
	}
	return img, err
}

// subscribeSettle is how long an event subscription is given to reach
// containerd before the cache relies on it.
const subscribeSettle = 200 * time.Millisecond

// WatchImages keeps the image cache in step with containerd's image
// events until ctx ends, subscribing again after containerd went away.
func (r *Runtime) WatchImages(ctx context.Context) {
	ctx = r.ns(ctx)
	filter := fmt.Sprintf(`topic~="/images/",namespace==%q`, r.cfg.Namespace)
	for ctx.Err() == nil {
		sctx, cancel := context.WithCancel(ctx)
		evs, errs := r.client.Subscribe(sctx, filter)
		// The subscription is made by a call of its own: give it time to
		// reach containerd, then empty the cache, which catches what
		// changed before.
		select {
		case <-time.After(subscribeSettle):
			r.images.follow(true)
		case <-errs:
			cancel()
			continue
		case <-ctx.Done():
		}
	events:
		for {
			select {
			case <-evs:
				r.images.follow(true)
			case <-errs:
				break events
			case <-ctx.Done():
				break events
			}
		}
		r.images.follow(false)
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
func (r *Runtime) resolve(ctx context.Context, ref string) (Image, error) {
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

// imageCache holds resolved, unpacked images by reference. While it
// follows containerd's image events an entry is used as it is; otherwise
// only while its reference still names its digest.
type imageCache struct {
	mu sync.Mutex
	m  map[string]Image
	// following is set while the events are followed; gen counts the
	// times the cache was emptied, so that a resolve that raced an event
	// is not kept.
	following bool
	gen       uint64
}

// maxCachedImages bounds the cache; past it, it starts over.
const maxCachedImages = 64

func (c *imageCache) watched(ref string) (Image, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	img, ok := c.m[ref]
	return img, ok && c.following
}

func (c *imageCache) get(ref, digest string) (Image, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	img, ok := c.m[ref]
	return img, ok && img.Digest == digest
}

func (c *imageCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put keeps img unless the cache was emptied since generation gen.
func (c *imageCache) put(img Image, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.m == nil || len(c.m) >= maxCachedImages {
		c.m = map[string]Image{}
	}
	c.m[img.Ref] = img
}

// follow empties the cache, and says whether events are followed now.
func (c *imageCache) follow(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m, c.following = nil, on
	c.gen++
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
	// Released, when set, is called once the sandbox is gone, after Run
	// returned.
	Released func()
	// SandpitLabels are container labels of the executor's own.
	SandpitLabels map[string]string
	// Idle gives the sandbox the least CPU weight (a warm sandbox until
	// its claim).
	Idle bool
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
// timeout passes or ctx ends. Run returns once the program exited and its
// output was drained; every wait for that is bounded. Its container, task,
// snapshot and code directory are removed after, in the background (see
// Drain), and spec.Released is called once they are gone; what could not be
// removed (containerd gone, say) is left for Reap.
func (r *Runtime) Run(ctx context.Context, id string, spec Spec, started func()) (out Outcome, err error) {
	ctx = r.ns(ctx)
	defer r.lostContainerd(ctx, &err)
	stdinSent := make(chan struct{})
	// Always a pipe, closed once drained, as in a warm sandbox: node sees
	// the same kind of stdin either way.
	stdin := &closeOnEOF{r: bytes.NewReader(spec.Stdin), eof: stdinSent}
	b, err := r.create(ctx, id, spec, stdin, spec.Stdout, spec.Stderr)
	if err != nil {
		if spec.Released != nil {
			spec.Released()
		}
		return out, err
	}
	defer r.dispose(b, spec.Released)
	b.stdinSent = stdinSent
	if err := ctx.Err(); err != nil {
		return out, err
	}
	started()
	begin := time.Now()
	if err := b.task.Start(context.WithoutCancel(ctx)); err != nil {
		// runsc reports a missing init here rather than at create.
		return out, fmt.Errorf("start task: %w%s", err, r.createHint(err, b.hostID))
	}
	return b.wait(ctx, spec.Limits.Timeout, begin, baseline{})
}

// lostContainerd wraps *err in ErrContainerdUnavailable when containerd
// went away.
func (r *Runtime) lostContainerd(ctx context.Context, err *error) {
	if *err != nil && !errors.Is(*err, ErrContainerdUnavailable) && r.lost(context.WithoutCancel(ctx), *err) {
		*err = fmt.Errorf("%w: %w", ErrContainerdUnavailable, *err)
	}
}

// box is one sandbox from its creation to its removal: its files on the
// host, its container and its task.
type box struct {
	r          *Runtime
	id         string
	log        *slog.Logger
	execDir    string
	codeDir    string
	cgroupPath string
	hostID     uint32
	releaseID  func()
	container  containerd.Container
	task       containerd.Task
	// exited is closed once the task's exit status is in status.
	exited chan struct{}
	status containerd.ExitStatus
	// stdinSent is closed once stdin was copied in full; the shim is then
	// told to close the process's stdin.
	stdinSent chan struct{}
	// kept is set when the container or task could not be removed.
	kept bool
}

// create makes the sandbox of spec named id, up to its created task with
// its network connected, its standard streams wired to stdin, stdout and
// stderr. On error what it made is removed before it returns.
func (r *Runtime) create(ctx context.Context, id string, spec Spec, stdin io.Reader, stdout, stderr io.Writer) (_ *box, err error) {
	// Not cut short by the caller: a task whose creation was cancelled
	// half-way can leave a shim no task record points to.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	r.enter(id)
	b := &box{
		r:          r,
		id:         id,
		log:        r.log.With("execution_id", id),
		execDir:    filepath.Join(r.cfg.StateDir, "executions", id),
		cgroupPath: path.Join("/", r.cfg.Namespace, id),
		exited:     make(chan struct{}),
	}
	b.codeDir = filepath.Join(b.execDir, "code")
	defer func() {
		if err != nil {
			r.remove(b)
		}
	}()
	if err := os.Mkdir(b.execDir, 0o711); err != nil {
		return b, fmt.Errorf("create execution dir: %w", err)
	}
	if err := os.Mkdir(b.codeDir, 0o755); err != nil {
		return b, fmt.Errorf("create code dir: %w", err)
	}
	if err := writeCode(b.codeDir, spec.Files); err != nil {
		return b, err
	}
	extra, err := writeExtraFiles(filepath.Join(b.execDir, "extra"), spec.ExtraFiles)
	if err != nil {
		return b, err
	}
	if r.cfg.HostIDs != nil {
		if b.hostID, b.releaseID, err = r.cfg.HostIDs.Take(); err != nil {
			return b, err
		}
	}

	labels := map[string]string{LabelManaged: "true", LabelExecution: id}
	for k, v := range spec.Labels {
		labels[LabelUserPrefix+k] = v
	}
	for k, v := range spec.SandpitLabels {
		labels[k] = v
	}
	b.container, err = r.client.NewContainer(ctx, id,
		containerd.WithContainerLabels(labels),
		containerd.WithSnapshotter(r.cfg.Snapshotter),
		containerd.WithNewSnapshotView(id, spec.Image.image, snapshots.WithLabels(map[string]string{LabelManaged: "true"})),
		r.withRuntime(spec),
		containerd.WithNewSpec(append(specOpts(spec, r.cfg, b.hostID, b.cgroupPath, b.codeDir, extra), runscSpecOpts(spec)...)...),
	)
	if err != nil {
		return b, fmt.Errorf("create container: %w", err)
	}
	b.task, err = b.container.NewTask(ctx, cio.NewCreator(cio.WithStreams(stdin, stdout, stderr)))
	if err != nil {
		return b, fmt.Errorf("create task: %w%s", err, r.createHint(err, b.hostID))
	}
	if spec.Network != nil {
		if err := spec.Network(fmt.Sprintf("/proc/%d/ns/net", b.task.Pid())); err != nil {
			return b, err
		}
	}
	// Wait before Start, so that an exit right after start is not missed.
	exitCh, err := b.task.Wait(context.WithoutCancel(ctx))
	if err != nil {
		return b, fmt.Errorf("wait task: %w", err)
	}
	go func() {
		b.status = <-exitCh
		close(b.exited)
	}()
	return b, nil
}

// baseline is what a warm sandbox used before its program started, taken
// off what the Outcome reports.
type baseline struct {
	cpu  time.Duration
	oom  uint64
	peak *os.File // memory.peak, reset at the claim; nil reads the file
}

// wait waits for the started program to exit, to time out or for ctx to
// end, and reads what it used.
func (b *box) wait(ctx context.Context, timeout time.Duration, begin time.Time, base baseline) (out Outcome, err error) {
	r := b.r
	cleanupCtx := context.WithoutCancel(ctx)
	stdinClosed := make(chan struct{})
	// The shim keeps the process's stdin open until told to close it, so
	// the program would never see EOF otherwise.
	go func() {
		defer close(stdinClosed)
		select {
		case <-b.stdinSent:
			cctx, cancel := context.WithTimeout(cleanupCtx, cleanupTimeout)
			defer cancel()
			if err := b.task.CloseIO(cctx, containerd.WithStdinCloser); err != nil && !errdefs.IsNotFound(err) {
				b.log.Warn("close stdin", "error", err)
			}
		case <-b.exited:
		}
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-b.exited:
	case <-timer.C:
		out.TimedOut = true
		err = r.killAndWait(cleanupCtx, b, b.log)
	case <-ctx.Done():
		out.Killed = true
		err = r.killAndWait(cleanupCtx, b, b.log)
	}
	out.WallTime = time.Since(begin)
	<-stdinClosed
	if err != nil {
		return out, err
	}
	if err := b.status.Error(); err != nil {
		return out, fmt.Errorf("wait task: %w", err)
	}
	code := b.status.ExitCode()
	out.ExitCode = int32(code)
	if code > 128 && code < 128+65 {
		out.Signal = syscall.Signal(code - 128)
	}

	// The PID namespace ends with node, so the pipes close and the copy
	// finishes; the bound only guards against a stuck shim.
	if !waitIO(b.task.IO(), drainTimeout) {
		r.stuck("drain", b.log)
		b.task.IO().Cancel()
	}

	usage, err := readUsage(b.cgroupPath, base.peak)
	if err != nil {
		b.log.Warn("read cgroup usage", "error", err)
	}
	usage.CPU = max(usage.CPU-base.cpu, 0)
	usage.OOMKills -= min(base.oom, usage.OOMKills)
	out.Usage = usage
	return out, nil
}

// dispose removes b in the background, at most teardownConcurrency at a
// time, and then calls released (nil for none).
func (r *Runtime) dispose(b *box, released func()) {
	r.teardowns.Add(1)
	r.metrics.TeardownsInFlight.Inc()
	go func() {
		defer r.teardowns.Done()
		defer r.metrics.TeardownsInFlight.Dec()
		r.teardownSlots <- struct{}{}
		ok := r.remove(b)
		<-r.teardownSlots
		result := "ok"
		if !ok {
			result = "failed"
		}
		r.metrics.Teardowns.WithLabelValues(result).Inc()
		if released != nil {
			released()
		}
	}()
}

// Drain waits until every sandbox handed to the background removal is
// gone, or ctx ends.
func (r *Runtime) Drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		r.teardowns.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// teardownConcurrency bounds the sandboxes removed at once.
const teardownConcurrency = 4

// remove deletes b's task (killing what still runs), closes its output,
// deletes its container and snapshot, frees its host ids and removes its
// files; it reports whether everything went. Each containerd call is
// bounded; what fails is left for Reap.
func (r *Runtime) remove(b *box) bool {
	defer r.leave(b.id)
	ctx := r.ns(context.Background())
	if b.task != nil {
		dctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
		if err := r.deleteTask(dctx, b.task); err != nil && !errdefs.IsNotFound(err) {
			r.cleanupFailed("task", b.log, err)
			b.kept = true
		}
		cancel()
		// A Delete that failed leaves the output copy running, and
		// closing the FIFOs is what ends it.
		closeIO(b.task.IO(), b.log)
	}
	if b.container != nil {
		dctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
		if err := b.container.Delete(dctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			r.cleanupFailed("container", b.log, err)
			b.kept = true
		}
		cancel()
	}
	// Freed only once the sandbox is certainly gone: a range whose
	// processes may still run is never given to another sandbox.
	if b.releaseID != nil && !b.kept {
		b.releaseID()
	}
	if err := os.RemoveAll(b.execDir); err != nil {
		r.cleanupFailed("code_dir", b.log, err)
		return false
	}
	return !b.kept
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

// killAndWait kills every process of b's task and waits, bounded, for the
// exit the kill causes.
func (r *Runtime) killAndWait(ctx context.Context, b *box, log *slog.Logger) error {
	r.kill(ctx, b.task, log)
	select {
	case <-b.exited:
		return nil
	case <-time.After(killTimeout):
		r.stuck("kill", log)
		return fmt.Errorf("%w: no exit %s after SIGKILL", ErrStuck, killTimeout)
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
