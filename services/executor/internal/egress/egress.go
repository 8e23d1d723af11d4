// Package egress connects sandboxes to the egress proxy: per execution a
// network namespace, the resolver and CA the proxy needs it to use, and the
// policy the decision service applies to its requests.
package egress

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
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

// Config says where the proxy is and which addresses sandboxes get.
type Config struct {
	// Pool is the IPv4 prefix sandbox subnets come from.
	Pool string
	// ProxyGRPC is the proxy's gRPC address (EgressService: the CA).
	ProxyGRPC string
	// ProxyPort and DNSPort are the proxy's transparent and DNS ports on
	// this host, where nftables redirects sandbox traffic.
	ProxyPort, DNSPort uint16
	// Table names the executor's nftables tables.
	Table string
	// PolicyFile is the operator's policy (YAML); empty means deny all.
	PolicyFile string
	// IfPrefix and NamePrefix name the host veths and the namespaces; the
	// executor owns everything with these prefixes.
	IfPrefix, NamePrefix string
}

// Egress is the executor's side of the egress path.
type Egress struct {
	cfg  Config
	net  *netns.Manager
	reg  *decision.Registry
	conn *grpc.ClientConn
	ca   egressv1.EgressServiceClient
	log  *slog.Logger

	base    atomic.Pointer[policy.Compiled]
	stop    context.CancelFunc
	stopped chan struct{}

	caMu   sync.Mutex
	caPEM  []byte
	caTime time.Time
}

// New removes a previous executor's namespaces, veths and tables, installs
// fresh tables, loads the policy file and starts watching it.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Egress, error) {
	pool, err := netip.ParsePrefix(cfg.Pool)
	if err != nil {
		return nil, fmt.Errorf("address pool: %w", err)
	}
	m, err := netns.NewManager(pool, cfg.IfPrefix, cfg.NamePrefix)
	if err != nil {
		return nil, err
	}
	nsCount, links, err := m.Sweep()
	log.Info("removed leftover sandbox networks", "namespaces", nsCount, "veths", links)
	if err != nil {
		return nil, fmt.Errorf("sweep sandbox networks: %w", err)
	}
	if err := firewall.Install(firewall.Config{Table: cfg.Table, IfPrefix: cfg.IfPrefix, ProxyPort: cfg.ProxyPort, DNSPort: cfg.DNSPort}); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(cfg.ProxyGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("egress proxy client: %w", err)
	}
	e := &Egress{cfg: cfg, net: m, reg: decision.NewRegistry(), conn: conn, ca: egressv1.NewEgressServiceClient(conn), log: log, stopped: make(chan struct{})}
	base, mtime, err := loadPolicy(cfg.PolicyFile)
	if err != nil {
		conn.Close()
		return nil, err
	}
	e.base.Store(base)
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	e.stop = stop
	go func() {
		defer close(e.stopped)
		e.watchPolicy(wctx, mtime)
	}()
	return e, nil
}

// Registry is the address-to-execution map the decision service uses.
func (e *Egress) Registry() *decision.Registry { return e.reg }

// Close stops watching the policy file, closes the proxy connection and
// removes the nftables tables.
func (e *Egress) Close() error {
	e.stop()
	<-e.stopped
	return errors.Join(e.conn.Close(), firewall.Remove(e.cfg.Table))
}

// Attachment is one execution's connection to the egress path.
type Attachment struct {
	// NetNSPath, ExtraFiles and Env go into the sandbox spec.
	NetNSPath  string
	ExtraFiles []sandbox.File
	Env        []string
	// Network is the decision state of the execution.
	Network *decision.Execution
	// NetworkError says why the sandbox has no egress, if it has none.
	NetworkError string

	e          *Egress
	sb         *netns.Sandbox
	unregister func()
	detachOnce sync.Once
	detachErr  error
}

// ErrNoAddress is returned when the address pool is exhausted.
var ErrNoAddress = netns.ErrPoolExhausted

// Attach creates the execution's namespace and registers its policy: the
// operator's, narrowed by inline (nil for none). Live events go to events.
func (e *Egress) Attach(ctx context.Context, id string, inline *policy.Compiled, events chan<- *executorv1.NetworkEvent) (*Attachment, error) {
	sb, err := e.net.Create(id)
	if err != nil {
		return nil, fmt.Errorf("create sandbox network: %w", err)
	}
	a := &Attachment{e: e, sb: sb, NetNSPath: sb.Path}
	a.Network = decision.NewExecution(id, policy.Chain(e.base.Load(), inline), events)
	a.unregister = e.reg.Register(sb.SandboxIP, a.Network)
	a.ExtraFiles = []sandbox.File{{
		Path:    resolvConfPath,
		Content: []byte("nameserver " + sb.HostIP.String() + "\noptions timeout:2 attempts:2\n"),
	}}
	ca, err := e.caCert(ctx)
	if err != nil {
		a.NetworkError = "egress proxy unavailable: " + err.Error()
	} else {
		a.ExtraFiles = append(a.ExtraFiles, sandbox.File{Path: CABundlePath, Content: ca})
		a.Env = []string{"NODE_EXTRA_CA_CERTS=" + CABundlePath}
	}
	return a, nil
}

// Do runs fn on a thread inside the sandbox's network namespace: sockets it
// opens are the sandbox's. For tests and benchmarks.
func (a *Attachment) Do(fn func() error) error { return a.sb.Do(fn) }

// GatewayIP is the host end's address, the sandbox's default route.
func (a *Attachment) GatewayIP() string { return a.sb.HostIP.String() }

// Detach ends the execution's registration and removes its namespace; it
// sets NetworkError if the proxy was gone by the end. Calls after the first
// do nothing.
func (a *Attachment) Detach() error {
	a.detachOnce.Do(func() {
		a.unregister()
		if a.NetworkError == "" && !a.e.reg.Connected() {
			a.NetworkError = "egress proxy unavailable: no decision stream from the proxy"
		}
		a.detachErr = a.e.net.Delete(a.sb)
	})
	return a.detachErr
}

// caCert returns the proxy's CA certificate, asked anew at most every few
// seconds so that a restarted proxy's new CA is picked up.
func (e *Egress) caCert(ctx context.Context) ([]byte, error) {
	e.caMu.Lock()
	defer e.caMu.Unlock()
	if e.caPEM != nil && time.Since(e.caTime) < 5*time.Second {
		return e.caPEM, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := e.ca.GetCACertificate(ctx, &egressv1.GetCACertificateRequest{})
	if err != nil {
		e.caPEM = nil
		return nil, fmt.Errorf("get CA certificate: %w", err)
	}
	pemBytes := resp.GetCertificatePem()
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("get CA certificate: the proxy sent no PEM certificate")
	}
	if sum := sha256.Sum256(block.Bytes); resp.GetSha256() != "" && hex.EncodeToString(sum[:]) != resp.GetSha256() {
		return nil, errors.New("get CA certificate: fingerprint mismatch")
	}
	e.caPEM, e.caTime = pemBytes, time.Now()
	return pemBytes, nil
}

// loadPolicy reads the operator's policy file; without one every request is
// denied.
func loadPolicy(path string) (*policy.Compiled, time.Time, error) {
	if path == "" {
		return policy.DenyAll(), time.Time{}, nil
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
	return c, st.ModTime(), nil
}

// watchPolicy reloads the policy file when it changes. A file that no
// longer loads keeps the last good policy in force.
func (e *Egress) watchPolicy(ctx context.Context, mtime time.Time) {
	if e.cfg.PolicyFile == "" {
		return
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := os.Stat(e.cfg.PolicyFile)
		if err != nil || st.ModTime().Equal(mtime) {
			continue
		}
		c, m, err := loadPolicy(e.cfg.PolicyFile)
		if err != nil {
			e.log.Error("policy file changed but does not load; keeping the previous policy", "error", err)
			mtime = st.ModTime()
			continue
		}
		e.base.Store(c)
		mtime = m
		e.log.Info("policy file reloaded", "path", e.cfg.PolicyFile)
	}
}
