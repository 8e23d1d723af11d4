// Package config reads the executor's configuration from flags, each with an
// environment variable as fallback (SANDPIT_ plus the flag name in upper
// snake case: --max-concurrent is SANDPIT_MAX_CONCURRENT).
package config

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sandpit-run/sandpit/services/daemon/envflag"
	"github.com/sandpit-run/sandpit/services/daemon/grpcserve"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/executor/internal/decisionlisten"
	"github.com/sandpit-run/sandpit/services/executor/internal/firewall"
	"github.com/sandpit-run/sandpit/services/executor/internal/identity"
	"github.com/sandpit-run/sandpit/services/executor/internal/imageinspect"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/netns"
	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
)

// Config is the executor's whole configuration.
type Config struct {
	Listen string
	// TLS, when enabled, secures Listen: the callers' port.
	TLS           grpcserve.TLSFiles
	MetricsListen string
	LogLevel      string

	ContainerdAddress   string
	ContainerdNamespace string
	Snapshotter         string
	RuncPath            string
	StateDir            string
	SandboxUID          uint
	SandboxGID          uint
	// InitPath is the image's init, node's parent; empty makes node PID 1.
	InitPath string
	// UserNS gives each sandbox its own user namespace, mapped from one of
	// UserNSCount ranges of 65536 host ids from UserNSBase.
	UserNS      bool
	UserNSBase  uint32
	UserNSCount uint32

	// Runtimes chooses each sandbox's OCI runtime: --runtime, and the
	// images --image-runtime binds to one.
	Runtimes      ociruntime.Table
	RunscPath     string
	RunscPlatform string

	Image          string
	ImageAllowlist []string
	// CheckImages refuses images the inspector finds a class of file in
	// but node and ImageAllowClasses.
	CheckImages       bool
	ImageAllowClasses []imageinspect.Class
	// ImagePullTimeout bounds pulling an allowed image that is not in
	// containerd; zero never pulls.
	ImagePullTimeout time.Duration
	NodePath         string

	Defaults, Maxima limits.Set

	// Egress: without it sandboxes have loopback only. With it the
	// executor serves the proxy's decisions on DecisionListen and learns
	// the proxy's CA from its hello; it never dials the proxy.
	Egress         bool
	DecisionListen string
	// DecisionTLS and DecisionInsecureTCP say whom a TCP DecisionListen
	// admits; a unix socket admits ProxyUser's peers alone.
	DecisionTLS         decisionlisten.TLSFiles
	DecisionInsecureTCP bool
	ProxyPort           uint
	DNSPort             uint
	ProxyUser           string
	AddressPool         string
	NftTable            string
	VethPrefix          string
	NetnsPrefix         string
	PolicyFile          string
	// MaxNetworkLogBytes bounds the network logs of all running
	// executions together.
	MaxNetworkLogBytes uint64
	// DNSPacketRate bounds each sandbox's UDP DNS packets a second, in
	// the kernel.
	DNSPacketRate uint

	MaxConcurrent int
	// WarmPool is how many warm sandboxes (booted ahead of time) of the
	// default image are kept ready; WarmPoolMaxAge how long one is kept.
	WarmPool       int
	WarmPoolMaxAge time.Duration
	MaxQueue       int
	ShutdownGrace  time.Duration

	// JWT authenticates callers when it names a key.
	JWT identity.Config

	// TenantsFile or PolicyStore (a postgres:// URL), at most one, make
	// the executor serve tenants: each caller's tenant and tier decide its
	// policy and limits. TenantsReload is how often the file is looked at.
	TenantsFile   string
	PolicyStore   string
	TenantsReload time.Duration
	// SecretsDir holds the secrets requests may name (DIR/<tenant>/<name>,
	// or DIR/<name> without tenants); SecretsReload is how often it is
	// looked at.
	SecretsDir    string
	SecretsReload time.Duration
}

// maxWarmPool bounds --warm-pool: each warm sandbox holds a node, a shim
// and a network.
const maxWarmPool = 64

// DefaultImageAllowlist allows sandpit's node and node-sdk profiles, each
// Node.js major; not node-debug.
const DefaultImageAllowlist = "sandpit.local/node:*,sandpit.local/node-sdk:*"

// Defaults of the sandboxes' init and user namespaces: tini where the image
// puts it, and 1024 ranges of 65536 host ids from 2^31 (far above any
// host's users and the usual /etc/subuid ranges, which start at 100000).
const (
	DefaultInitPath    = "/usr/bin/tini"
	DefaultUserNSBase  = 1 << 31
	DefaultUserNSCount = 1024
)

// DefaultProxyUser is the user the egress proxy runs as under make run and
// the systemd units: a user of its own, so that the output rule that keeps
// its sockets from metadata addresses touches no other process.
const DefaultProxyUser = "sandpit-egress"

// DefaultDecisionListen is the decision service's socket, under the
// default --state-dir, where the proxy's --decider looks by default.
const DefaultDecisionListen = "unix:///run/sandpit/executor/decision.sock"

// Parse reads args (without the program name) and the environment.
func Parse(args []string, getenv func(string) string) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("sandpit-executor", flag.ContinueOnError)
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:50051", "gRPC listen address")
	fs.StringVar(&c.TLS.CertFile, "tls-cert", "", "PEM certificate chain served on --listen (TLS); read again at each new connection, so a renewed file needs no restart; empty serves plaintext")
	fs.StringVar(&c.TLS.KeyFile, "tls-key", "", "PEM private key of --tls-cert; a new pair that does not load leaves the last good one in force, and is logged")
	fs.StringVar(&c.TLS.ClientCAFile, "tls-client-ca", "", "PEM CA certificates: with it, callers must present a client certificate one of them signed (mTLS); its subject CN or URI SAN is logged with each call")
	fs.StringVar(&c.MetricsListen, "metrics-listen", "127.0.0.1:9464", "HTTP listen address of /metrics; empty disables it")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.ContainerdAddress, "containerd-address", "/run/containerd/containerd.sock", "containerd socket")
	fs.StringVar(&c.ContainerdNamespace, "containerd-namespace", "sandpit", "containerd namespace the executor owns")
	fs.StringVar(&c.Snapshotter, "snapshotter", "overlayfs", "containerd snapshotter")
	fs.StringVar(&c.RuncPath, "runc", "/usr/local/lib/sandpit/runc", "runc binary the sandboxes run under")
	c.Runtimes.Default = ociruntime.Runc
	fs.Var(runtimeName{&c.Runtimes.Default}, "runtime", "OCI runtime sandboxes run under: runc, or runsc (gVisor) where it is installed")
	fs.Var(&bindings{&c.Runtimes.Bindings}, "image-runtime", "IMAGE=RUNTIME: run IMAGE (a reference, or a prefix ending in *) under RUNTIME instead of --runtime; repeatable, first match wins")
	fs.StringVar(&c.RunscPath, "runsc", "/usr/bin/runsc", "gVisor's runsc binary (Debian's runsc package); where it is absent, requests for images bound to runsc are refused")
	fs.StringVar(&c.RunscPlatform, "runsc-platform", "ptrace", "runsc's platform: ptrace, or kvm where /dev/kvm works")
	fs.StringVar(&c.StateDir, "state-dir", "/run/sandpit/executor", "directory for per-execution files")
	fs.UintVar(&c.SandboxUID, "sandbox-uid", 65532, "uid the program runs as (not 0)")
	fs.UintVar(&c.SandboxGID, "sandbox-gid", 65532, "gid the program runs as (not 0)")
	fs.StringVar(&c.InitPath, "init", DefaultInitPath, "init inside the image that runs node as its child, reaps orphans and exits with node's status; empty runs node as PID 1 (orphans of the program's children then stay zombies)")
	fs.BoolVar(&c.UserNS, "userns", true, "run each sandbox in a user namespace of its own: ids 0-65535 inside map to a range of host ids no other running sandbox has (--userns-base, --userns-count); needs containerd's state directory (/run/containerd) to be 0711")
	c.UserNSBase, c.UserNSCount = DefaultUserNSBase, DefaultUserNSCount
	fs.Var(uint32Value{&c.UserNSBase}, "userns-base", "first host uid and gid of the sandboxes' user namespaces (a multiple of 65536); keep the ranges clear of the host's users and of /etc/subuid")
	fs.Var(uint32Value{&c.UserNSCount}, "userns-count", "ranges of 65536 host ids from --userns-base, one per running sandbox; at least --max-concurrent")
	fs.StringVar(&c.Image, "image", "sandpit.local/node:24", "default sandbox image")
	allow := fs.String("image-allowlist", DefaultImageAllowlist, "comma-separated images a request may name besides the default; a trailing * matches a prefix. A request names sandpit's images by profile (node, node-sdk, node-sdk:22 for sandpit.local/node-sdk:22); node-debug, which has a shell, is allowed only when listed here")
	fs.DurationVar(&c.ImagePullTimeout, "image-pull-timeout", 2*time.Minute, "an allowed image that is not in containerd (and not under sandpit.local/) is pulled from its registry within this long (plain HTTP only from a loopback registry); 0 never pulls (IMAGE_NOT_FOUND)")
	fs.BoolVar(&c.CheckImages, "image-check", true, "read every image before its first use (the image inspector) and refuse one holding a shell, another interpreter, a network tool, a package manager, a compiler, a setuid, setgid or capability file or a world-writable path (IMAGE_CONTENT_FORBIDDEN), but what --image-allow-classes names; the default image is checked at start")
	allowClasses := fs.String("image-allow-classes", "", "comma-separated classes the image check lets through (shell for node-debug): shell, interpreter, network-tool, package-manager, compiler, setuid, setgid, capability, world-writable")
	fs.StringVar(&c.NodePath, "node-path", "/usr/local/bin/node", "node binary inside the image")
	fs.BoolVar(&c.Egress, "egress", false, "give sandboxes egress through the egress proxy on this host (which connects to --decision-listen); without it sandboxes have loopback only")
	c.MaxNetworkLogBytes = decision.DefaultMaxNetworkLogBytes
	fs.Var(byteSize{&c.MaxNetworkLogBytes}, "max-network-log-bytes", "bytes the network logs of all running executions may hold together (bytes, or with KiB/MiB/GiB; each log is also bounded to about 3 MiB); past it new entries are left out and counted in network_log_omitted")
	fs.UintVar(&c.DNSPacketRate, "dns-packet-rate", firewall.DefaultDNSPacketRate, "UDP DNS packets a second each sandbox may send (burst 200); past it nftables drops them before they reach the proxy, whose own per-sandbox DNS limits answer REFUSED well below this")
	fs.StringVar(&c.DecisionListen, "decision-listen", DefaultDecisionListen, "where the decision service the egress proxy connects to listens (with --egress): unix:///path, a socket only --proxy-user may open (mode 0600, its owner; other peers' uids are refused on accept), or host:port with mutual TLS (--decision-tls-cert, --decision-tls-key, --decision-client-ca, --decision-proxy-identity) or --decision-insecure-tcp")
	fs.StringVar(&c.DecisionTLS.CertFile, "decision-tls-cert", "", "PEM certificate of the decision service on a TCP --decision-listen")
	fs.StringVar(&c.DecisionTLS.KeyFile, "decision-tls-key", "", "PEM private key of --decision-tls-cert")
	fs.StringVar(&c.DecisionTLS.ClientCAFile, "decision-client-ca", "", "PEM CA bundle the egress proxy's client certificate must chain to")
	fs.StringVar(&c.DecisionTLS.Identity, "decision-proxy-identity", "", "the only client identity admitted to the decision service: a DNS or URI SAN (e.g. spiffe://sandpit/egress-proxy) or the subject CN of the proxy's certificate")
	fs.BoolVar(&c.DecisionInsecureTCP, "decision-insecure-tcp", false, "serve a TCP --decision-listen in the clear: any local process can then open the Decide stream; for tests only")
	fs.UintVar(&c.ProxyPort, "proxy-port", 15001, "the egress proxy's transparent TCP port on this host")
	fs.UintVar(&c.DNSPort, "dns-port", 15053, "the egress proxy's DNS port on this host")
	fs.StringVar(&c.ProxyUser, "proxy-user", DefaultProxyUser, "user (name or uid) the egress proxy runs as: its sockets can never reach link-local and cloud metadata addresses except for DNS")
	fs.StringVar(&c.AddressPool, "address-pool", "10.88.0.0/16", "IPv4 prefix sandbox /30 subnets come from")
	fs.StringVar(&c.NftTable, "nft-table", "sandpit", "name of the executor's nftables tables")
	fs.StringVar(&c.VethPrefix, "veth-prefix", "sp", "name prefix of the host ends of sandbox veths; the executor owns every interface with it")
	fs.StringVar(&c.NetnsPrefix, "netns-prefix", netns.DefaultNamePrefix, "name prefix of the sandboxes' network namespaces under /run/netns; the executor owns every namespace with it")
	fs.StringVar(&c.PolicyFile, "policy-file", "", "the operator's network policy (YAML), reloaded on change; empty denies every request")
	fs.IntVar(&c.MaxConcurrent, "max-concurrent", 8, "executions running at once")
	fs.IntVar(&c.WarmPool, "warm-pool", 2, "sandboxes of the default image booted ahead of time (container, network, node started and waiting), each for one execution that fits it: the default entrypoint, /tmp size and open-files limit, no NODE_*, UV_*, OPENSSL_*, SSL_*, LD_*, MALLOC_* or GLIBC_TUNABLES variable; others run cold. Refilled in the background; 0 disables")
	fs.DurationVar(&c.WarmPoolMaxAge, "warm-pool-max-age", 10*time.Minute, "how long an unclaimed warm sandbox is kept before it is recycled")
	fs.IntVar(&c.MaxQueue, "max-queue", 16, "executions waiting for a slot; past it requests get ResourceExhausted")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM, how long running executions may finish before they are killed")

	c.Defaults, c.Maxima = limits.Defaults, limits.Maxima
	limitFlags(fs, "default", &c.Defaults)
	limitFlags(fs, "max", &c.Maxima)
	jwtFlags(fs, &c.JWT)
	fs.StringVar(&c.TenantsFile, "tenants-file", "", "tenants file (YAML, version 1): each tenant's and tier's policy, audit mode and limits; reloaded on change, a broken edit keeps the last good version; needs authenticated callers (--jwt-* or --tls-client-ca)")
	fs.StringVar(&c.PolicyStore, "policy-store", "", "postgres:// URL of a tenants database (the schema is migrated at start; changes are picked up by LISTEN/NOTIFY); instead of --tenants-file. Its sandpit_secrets table holds tenants' secrets too (a --secrets-dir file wins over a row)")
	fs.DurationVar(&c.TenantsReload, "tenants-reload-interval", 2*time.Second, "how often --tenants-file and the policy files it names are looked at")
	fs.StringVar(&c.SecretsDir, "secrets-dir", "", "directory of the secrets requests may name (ExecuteRequest.secrets), one file each, mode 0600: DIR/<tenant>/<name>, or DIR/<name> on an executor without tenants (SANDPIT_SECRET_<NAME> variables too); re-read on change, a broken edit keeps the last good version")
	fs.DurationVar(&c.SecretsReload, "secrets-reload-interval", 2*time.Second, "how often --secrets-dir is looked at")

	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if err := envflag.Apply(fs, getenv); err != nil {
		return c, err
	}
	for _, a := range strings.Split(*allowClasses, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		cl, err := imageinspect.ParseClass(a)
		if err != nil {
			return c, fmt.Errorf("image-allow-classes: %w", err)
		}
		c.ImageAllowClasses = append(c.ImageAllowClasses, cl)
	}
	if *allow != "" {
		for _, a := range strings.Split(*allow, ",") {
			if a = strings.TrimSpace(a); a != "" {
				c.ImageAllowlist = append(c.ImageAllowlist, a)
			}
		}
	}
	return c, c.validate()
}

// Tenants reports whether the executor serves tenants.
func (c Config) Tenants() bool { return c.TenantsFile != "" || c.PolicyStore != "" }

func (c Config) validate() error {
	if err := c.TLS.Check(); err != nil {
		return err
	}
	switch {
	case c.SandboxUID == 0 || c.SandboxGID == 0:
		return errors.New("sandbox-uid and sandbox-gid must not be 0")
	case c.UserNS && (c.SandboxUID >= 1<<16 || c.SandboxGID >= 1<<16):
		return errors.New("sandbox-uid and sandbox-gid must be below 65536 with --userns (a user namespace maps ids 0-65535)")
	case c.WarmPool < 0 || c.WarmPool > maxWarmPool:
		return fmt.Errorf("warm-pool (%d) must be from 0 to %d", c.WarmPool, maxWarmPool)
	case c.WarmPool > 0 && c.WarmPoolMaxAge < time.Second:
		return fmt.Errorf("warm-pool-max-age (%s) must be at least 1s", c.WarmPoolMaxAge)
	case c.UserNS && int(c.UserNSCount) < c.MaxConcurrent+c.WarmPool:
		return fmt.Errorf("userns-count (%d) must be at least max-concurrent + warm-pool (%d): each sandbox, running or warm, needs a range of its own", c.UserNSCount, c.MaxConcurrent+c.WarmPool)
	case c.UserNS && (c.UserNSBase < 1<<16 || c.UserNSBase%(1<<16) != 0 || uint64(c.UserNSBase)+uint64(c.UserNSCount)<<16 > 1<<32-1):
		return errors.New("userns-base must be a non-zero multiple of 65536, and userns-base + 65536 × userns-count must stay below 2^32-1")
	case c.MaxConcurrent < 1:
		return errors.New("max-concurrent must be at least 1")
	case c.MaxQueue < 0:
		return errors.New("max-queue must not be negative")
	case c.ShutdownGrace < 0:
		return errors.New("shutdown-grace must not be negative")
	case c.ProxyPort == 0 || c.ProxyPort > 65535 || c.DNSPort == 0 || c.DNSPort > 65535:
		return errors.New("proxy-port and dns-port must be ports (1-65535)")
	case c.MaxNetworkLogBytes == 0 || c.MaxNetworkLogBytes > 1<<40:
		return errors.New("max-network-log-bytes must be between 1 byte and 1 TiB")
	case c.DNSPacketRate == 0 || c.DNSPacketRate > 1_000_000:
		return errors.New("dns-packet-rate must be between 1 and 1,000,000 packets a second")
	case c.ProxyUser == "":
		return errors.New("proxy-user must name the egress proxy's user (name or uid)")
	case c.Egress && c.decisionListen().Validate() != nil:
		return c.decisionListen().Validate()
	case c.RunscPlatform != sandbox.RunscPlatformPtrace && c.RunscPlatform != sandbox.RunscPlatformKVM:
		return fmt.Errorf("runsc-platform %q: want ptrace or kvm", c.RunscPlatform)
	case c.TenantsFile != "" && c.PolicyStore != "":
		return errors.New("tenants-file and policy-store: set one, not both")
	case c.PolicyStore != "" && !strings.HasPrefix(c.PolicyStore, "postgres://") && !strings.HasPrefix(c.PolicyStore, "postgresql://"):
		return errors.New("policy-store must be a postgres:// URL")
	case c.Tenants() && !c.JWT.Enabled() && c.TLS.ClientCAFile == "":
		return errors.New("tenants-file and policy-store need callers to be authenticated: set --jwt-* keys or --tls-client-ca")
	case c.TenantsReload <= 0:
		return errors.New("tenants-reload-interval must be positive")
	case c.ImagePullTimeout < 0:
		return errors.New("image-pull-timeout must not be negative")
	case c.SecretsReload <= 0:
		return errors.New("secrets-reload-interval must be positive")
	case c.SecretsDir != "" && !c.Egress:
		return errors.New("secrets-dir needs the egress proxy (--egress): only the proxy places secrets into requests")
	}
	return limits.CheckConfig(c.Defaults, c.Maxima)
}

// decisionListen is the decision listener's configuration but for the
// proxy's uid, which is looked up when the listener opens.
func (c Config) decisionListen() decisionlisten.Config {
	return decisionlisten.Config{Address: c.DecisionListen, TLS: c.DecisionTLS, InsecureTCP: c.DecisionInsecureTCP}
}

// DecisionListener is the decision listener's configuration for the
// proxy's uid.
func (c Config) DecisionListener(proxyUID uint32) decisionlisten.Config {
	d := c.decisionListen()
	d.ProxyUID = proxyUID
	return d
}

// limitFlags defines --PREFIX-timeout and friends over s.
func limitFlags(fs *flag.FlagSet, prefix string, s *limits.Set) {
	what := "default"
	if prefix == "max" {
		what = "maximum"
	}
	fs.DurationVar(&s.Timeout, prefix+"-timeout", s.Timeout, what+" wall-clock timeout")
	fs.Var(byteSize{&s.MemoryBytes}, prefix+"-memory", what+" memory limit (bytes, or with KiB/MiB/GiB)")
	fs.Var(uint32Value{&s.CPUMillicores}, prefix+"-cpu-millicores", what+" CPU quota in thousandths of a core")
	fs.Var(uint32Value{&s.Pids}, prefix+"-pids", what+" processes and threads")
	fs.Var(byteSize{&s.OutputBytes}, prefix+"-output", what+" stdout+stderr bytes")
	fs.Var(byteSize{&s.CodeBytes}, prefix+"-code", what+" code, args, env and stdin bytes")
	fs.Var(byteSize{&s.TmpBytes}, prefix+"-tmp", what+" /tmp size")
	fs.Var(uint32Value{&s.OpenFiles}, prefix+"-open-files", what+" open file descriptors")
}

// runtimeName is an OCI runtime's name.
type runtimeName struct{ p *ociruntime.Name }

func (v runtimeName) String() string {
	if v.p == nil {
		return ""
	}
	return string(*v.p)
}

func (v runtimeName) Set(s string) error {
	n, err := ociruntime.Parse(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}

// bindings collects --image-runtime, one binding a use.
type bindings struct{ p *[]ociruntime.Binding }

func (v *bindings) String() string {
	if v.p == nil {
		return ""
	}
	var out []string
	for _, b := range *v.p {
		out = append(out, b.Image+"="+string(b.Runtime))
	}
	return strings.Join(out, ",")
}

func (v *bindings) Set(s string) error {
	b, err := ociruntime.ParseBinding(s)
	if err != nil {
		return err
	}
	*v.p = append(*v.p, b)
	return nil
}

// Repeatable makes SANDPIT_IMAGE_RUNTIME a comma-separated list.
func (v *bindings) Repeatable() {}

type uint32Value struct{ p *uint32 }

func (v uint32Value) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.FormatUint(uint64(*v.p), 10)
}

func (v uint32Value) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return err
	}
	*v.p = uint32(n)
	return nil
}

// byteSize parses "1048576", "512KiB", "64MiB" or "2GiB".
type byteSize struct{ p *uint64 }

func (v byteSize) String() string {
	if v.p == nil {
		return "0"
	}
	return FormatBytes(*v.p)
}

func (v byteSize) Set(s string) error {
	n, err := ParseBytes(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}

var units = []struct {
	suffix string
	mult   uint64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

// ParseBytes parses a byte count with an optional KiB, MiB, GiB or B suffix.
func ParseBytes(s string) (uint64, error) {
	mult := uint64(1)
	num := s
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			mult, num = u.mult, strings.TrimSuffix(s, u.suffix)
			break
		}
	}
	n, err := strconv.ParseUint(strings.TrimSpace(num), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("byte size %q: want a whole number with an optional KiB, MiB or GiB suffix", s)
	}
	if n > ^uint64(0)/mult {
		return 0, fmt.Errorf("byte size %q: too large", s)
	}
	return n * mult, nil
}

// FormatBytes writes n with the largest unit that divides it.
func FormatBytes(n uint64) string {
	for _, u := range units {
		if n != 0 && n%u.mult == 0 && u.mult > 1 {
			return strconv.FormatUint(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatUint(n, 10)
}
