// Package egress connects sandboxes to the egress proxy: per execution a
// network namespace, the resolver and CA the proxy needs it to use (the CA
// the connected proxy named in its hello), and the policy the decision
// service applies to its requests. The executor never dials the proxy.
package egress

import (
	"context"
	_ "embed"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/daemon/program"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/firewall"
	"github.com/sandpit-run/sandpit/services/executor/internal/netns"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Paths in the sandbox. The proxy's CA replaces the image's bundle: every
// TLS connection a sandbox makes ends at the proxy, so no other CA can ever
// be presented to it.
const (
	CABundlePath   = "/etc/ssl/certs/ca-certificates.crt"
	resolvConfPath = "/etc/resolv.conf"
)

// tlsServerName is the module node imports first in a sandbox with egress
// (tls_servername.mjs): it drops a trailing dot from TLS server names,
// which the proxy cannot accept. It is passed as a data: URL, so it needs
// no file (and no mount point) in the image.
//
//go:embed tls_servername.mjs
var tlsServerName []byte

// TLSServerNameFlag is node's option that imports it.
var TLSServerNameFlag = "--import=data:text/javascript;base64," + base64.StdEncoding.EncodeToString(tlsServerName)

// Config says where the proxy listens and which addresses sandboxes get.
type Config struct {
	// Pool is the IPv4 prefix sandbox subnets come from.
	Pool string
	// ProxyPort and DNSPort are the proxy's transparent and DNS ports on
	// this host, where nftables redirects sandbox traffic.
	ProxyPort, DNSPort uint16
	// ProxyUID is the uid the proxy runs as; its own connections to
	// metadata addresses are dropped.
	ProxyUID uint32
	// Table names the executor's nftables tables.
	Table string
	// PolicyFile is the operator's policy (YAML). Empty means deny all,
	// unless TenantsDecide.
	PolicyFile string
	// TenantsDecide means the executor serves tenants, each execution
	// narrowed by its tenant's policy: without PolicyFile the operator
	// adds no policy of its own.
	TenantsDecide bool
	// IfPrefix and NamePrefix name the host veths and the namespaces; the
	// executor owns everything with these prefixes.
	IfPrefix, NamePrefix string
	// MaxNetworkLogBytes bounds the network logs of all running
	// executions together; 0 is decision.DefaultMaxNetworkLogBytes.
	MaxNetworkLogBytes int64
	// DNSPacketRate bounds each sandbox's UDP DNS packets a second in
	// nftables; 0 is firewall.DefaultDNSPacketRate.
	DNSPacketRate uint32
}

// Egress is the executor's side of the egress path.
type Egress struct {
	cfg Config
	net *netns.Manager
	reg *decision.Registry
	log *slog.Logger
	// logs is the budget of every execution's network log together.
	logs *decision.LogBudget

	base    atomic.Pointer[policy.Compiled]
	stop    context.CancelFunc
	stopped chan struct{}
}

// New removes a previous executor's namespaces, veths and tables, installs
// fresh tables, loads the policy file and starts watching it. Its metrics
// are registered on metricsReg, nil for none.
func New(ctx context.Context, cfg Config, metricsReg prometheus.Registerer, log *slog.Logger) (*Egress, error) {
	pool, err := netip.ParsePrefix(cfg.Pool)
	if err != nil {
		return nil, fmt.Errorf("address pool: %w", err)
	}
	m, err := netns.NewManager(pool, cfg.IfPrefix, cfg.NamePrefix)
	if err != nil {
		return nil, err
	}
	// What the sweep cannot remove is reported and left: a namespace of
	// a previous executor holds no address once its veth is gone, and new
	// ones are named after new execution ids.
	nsCount, links, err := m.Sweep()
	log.Info("removed leftover sandbox networks", "namespaces", nsCount, "veths", links)
	if err != nil {
		log.Warn("some leftover sandbox networks could not be removed", "error", err)
	}
	if err := firewall.Install(firewall.Config{Table: cfg.Table, IfPrefix: cfg.IfPrefix, ProxyPort: cfg.ProxyPort, DNSPort: cfg.DNSPort, ProxyUID: cfg.ProxyUID, DNSPacketRate: cfg.DNSPacketRate}); err != nil {
		return nil, err
	}
	reg := decision.NewRegistry()
	reg.ExpectPorts(decision.Ports{Transparent: cfg.ProxyPort, DNS: cfg.DNSPort})
	e := &Egress{cfg: cfg, net: m, reg: reg, log: log, logs: decision.NewLogBudget(cfg.MaxNetworkLogBytes), stopped: make(chan struct{})}
	base, mtime, err := loadPolicy(cfg.PolicyFile, cfg.TenantsDecide)
	if err != nil {
		return nil, err
	}
	e.base.Store(base)
	w := &policyWatch{path: cfg.PolicyFile, base: &e.base, mtime: mtime, reloads: newReloads(metricsReg), log: log}
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	e.stop = stop
	go func() {
		defer close(e.stopped)
		w.run(wctx)
	}()
	return e, nil
}

// SourceOperator names the operator's policy file in decisions.
const SourceOperator = "operator"

// Policy is what an execution attached with narrow is decided by now.
func (e *Egress) Policy(narrow *policy.Compiled) *policy.Compiled {
	return chain(e.base.Load(), narrow)
}

// NetworkLogBytes returns the bytes the network logs of the running
// executions hold together, as their global bound counts them.
func (e *Egress) NetworkLogBytes() int64 { return e.logs.Used() }

// Registry is the address-to-execution map the decision service uses; it
// also holds the connected proxy's hello.
func (e *Egress) Registry() *decision.Registry { return e.reg }

// Close stops watching the policy file and removes the nftables tables.
func (e *Egress) Close() error {
	e.stop()
	<-e.stopped
	return firewall.Remove(e.cfg.Table)
}

// Attachment is one execution's connection to the egress path.
type Attachment struct {
	// ExtraFiles, Env and NodeFlags go into the sandbox spec, and Connect
	// is its Network.
	ExtraFiles []sandbox.File
	Env        []string
	NodeFlags  []string
	// Network is the decision state of the execution.
	Network *decision.Execution
	// NetworkError says why the sandbox has no egress, if it has none.
	NetworkError string

	e           *Egress
	sb          *netns.Sandbox
	caSHA256    string // of the CA the sandbox trusts; empty without one
	unregister  func()
	endOnce     sync.Once
	releaseOnce sync.Once
	releaseErr  error
}

// ErrNoAddress is returned when the address pool is exhausted.
var ErrNoAddress = netns.ErrPoolExhausted

// Attach reserves the execution's addresses and registers its policy: the
// operator's as it is at each decision (a reload applies to running
// executions), narrowed by inline (nil for none). Live events go to events.
// The sandbox trusts the CA of the proxy connected now; without one it
// has no egress, and NetworkError says so.
func (e *Egress) Attach(_ context.Context, id string, inline *policy.Compiled, events chan<- *executorv1.NetworkEvent) (*Attachment, error) {
	a, err := e.Prepare()
	if err != nil {
		return nil, err
	}
	a.Bind(id, inline, events)
	return a, nil
}

// Prepare reserves a sandbox's addresses and says what its spec needs for
// egress through the proxy connected now, for no execution yet: until
// Bind, the decision service denies its every request and query, and
// reports them to no one. A warm sandbox is prepared when it boots.
func (e *Egress) Prepare() (*Attachment, error) {
	sb, err := e.net.Reserve()
	if err != nil {
		return nil, fmt.Errorf("create sandbox network: %w", err)
	}
	a := &Attachment{e: e, sb: sb}
	a.ExtraFiles = []sandbox.File{{
		Path:    resolvConfPath,
		Content: []byte("nameserver " + sb.HostIP.String() + "\noptions timeout:2 attempts:2\n"),
	}}
	if px, ok := e.reg.Proxy(); ok {
		a.caSHA256 = px.CASHA256
		a.ExtraFiles = append(a.ExtraFiles, sandbox.File{Path: CABundlePath, Content: px.CAPEM})
		a.Env = []string{"NODE_EXTRA_CA_CERTS=" + CABundlePath}
		a.NodeFlags = []string{TLSServerNameFlag}
	} else {
		a.NetworkError = "egress proxy unavailable: no egress proxy has connected to the decision service"
	}
	return a, nil
}

// Bind registers execution id's policy (as Attach) for the prepared
// sandbox's address.
func (a *Attachment) Bind(id string, inline *policy.Compiled, events chan<- *executorv1.NetworkEvent) {
	live := &livePolicy{base: &a.e.base, inline: inline}
	a.Network = decision.NewLiveExecution(id, live.current, events)
	a.Network.UseLogBudget(a.e.logs)
	a.unregister = a.e.reg.Register(a.sb.SandboxIP, a.Network)
}

// Current reports whether the sandbox trusts what a sandbox prepared now
// would: the CA of the proxy connected now, or no proxy then and now.
func (a *Attachment) Current() bool {
	px, ok := a.e.reg.Proxy()
	if !ok {
		return a.caSHA256 == ""
	}
	return px.CASHA256 == a.caSHA256
}

// Connect wires the network namespace at path (the sandbox's, created by
// its runtime before the program starts) to the reserved addresses.
func (a *Attachment) Connect(path string) error {
	if err := a.e.net.Connect(a.sb, path); err != nil {
		return fmt.Errorf("connect sandbox network: %w", err)
	}
	return nil
}

// Do runs fn on a thread inside the sandbox's network namespace: sockets it
// opens are the sandbox's. For tests and benchmarks.
func (a *Attachment) Do(fn func() error) error { return a.sb.Do(fn) }

// GatewayIP is the host end's address, the sandbox's default route.
func (a *Attachment) GatewayIP() string { return a.sb.HostIP.String() }

// End waits for the proxy's last reports of an execution that used the
// network: until nothing of it was heard for settleQuiet (more than the
// proxy's 10ms between two refusal reports) and no exchange awaits its
// outcome, at most settleBound.
const (
	settleQuiet = 25 * time.Millisecond
	settleBound = 250 * time.Millisecond
)

// Detach ends the attachment: End, then Release.
func (a *Attachment) Detach() error {
	a.End()
	return a.Release()
}

// End ends the execution's registration, so no decision or event is made
// for it after it returns; it sets NetworkError if the proxy was gone by
// the end, or had been replaced by one with another CA, which the sandbox
// did not trust. Calls after the first do nothing.
func (a *Attachment) End() {
	a.endOnce.Do(func() {
		if a.unregister == nil {
			return
		}
		// What the proxy has yet to report of the execution counts in
		// its Result: the sandbox may have exited before it came.
		a.Network.Settle(settleQuiet, settleBound)
		a.unregister()
		a.Network.ReleaseLog()
		if a.NetworkError == "" {
			switch px, ok := a.e.reg.Proxy(); {
			case !ok:
				a.NetworkError = "egress proxy unavailable: no decision stream from the proxy"
			case px.CASHA256 != a.caSHA256:
				a.NetworkError = "egress proxy unavailable: the proxy restarted with another CA during the execution; TLS connections after that failed"
			}
		}
	})
}

// Release removes the sandbox's veth and gives its addresses back; call it
// once the sandbox is gone. Calls after the first do nothing.
func (a *Attachment) Release() error {
	a.releaseOnce.Do(func() {
		// The address goes back to the pool: its next sandbox must not
		// inherit this one's DNS meter.
		if err := firewall.ForgetDNSMeter(a.e.cfg.Table, a.sb.SandboxIP); err != nil {
			a.e.log.Warn("forget the sandbox's DNS meter", "error", err)
		}
		a.releaseErr = a.e.net.Delete(a.sb)
	})
	return a.releaseErr
}

// loadPolicy reads the operator's policy file, its decisions naming the
// operator as their source. Without one every request is denied, or with
// optional there is no operator policy (nil) and the executions' own
// narrowing decides.
func loadPolicy(path string, optional bool) (*policy.Compiled, time.Time, error) {
	if path == "" {
		if optional {
			return nil, time.Time{}, nil
		}
		return policy.DenyAll().From(SourceOperator), time.Time{}, nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("policy file: %w", err)
	}
	p, err := policy.Load(path)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("policy file %s: %w", path, err)
	}
	c, err := policy.Compile(p)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("policy file %s: %w", path, err)
	}
	return c.From(SourceOperator), st.ModTime(), nil
}

// policyWatch keeps base in step with the operator's policy file.
type policyWatch struct {
	path string
	base *atomic.Pointer[policy.Compiled]
	// mtime is the file's when it was last loaded or found broken.
	mtime   time.Time
	reloads *prometheus.CounterVec // by result; nil counts nothing
	log     *slog.Logger
}

// newReloads registers the reload counter on reg; nil registers nothing
// and counts nothing.
func newReloads(reg prometheus.Registerer) *prometheus.CounterVec {
	if reg == nil {
		return nil
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sandpit_policy_reloads_total",
		Help: "Changes of the operator's policy file, by result: ok, or failed when it did not load and the previous policy stayed in force.",
	}, []string{"result"})
	// Both series exist from the start: an alert on failed reads 0, not
	// nothing, until the first broken file.
	c.WithLabelValues("ok")
	c.WithLabelValues("failed")
	reg.MustRegister(c)
	return c
}

// run polls the file until ctx ends.
func (w *policyWatch) run(ctx context.Context) {
	if w.path == "" {
		return
	}
	program.Every(ctx, PolicyPollInterval, w.check)
}

// PolicyPollInterval is how often the operator's policy file is looked at.
const PolicyPollInterval = 2 * time.Second

// check reloads the file if it changed since the last look. A file that no
// longer loads keeps the last good policy in force.
func (w *policyWatch) check() {
	st, err := os.Stat(w.path)
	if err != nil || st.ModTime().Equal(w.mtime) {
		return
	}
	c, m, err := loadPolicy(w.path, false)
	if err != nil {
		w.log.Error("policy file changed but does not load; keeping the previous policy", "path", w.path, "error", err)
		w.mtime = st.ModTime()
		w.count("failed")
		return
	}
	w.base.Store(c)
	w.mtime = m
	w.count("ok")
	w.log.Info("policy file reloaded", "path", w.path)
}

func (w *policyWatch) count(result string) {
	if w.reloads != nil {
		w.reloads.WithLabelValues(result).Inc()
	}
}
