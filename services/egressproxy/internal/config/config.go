// Package config reads the egress proxy's configuration from flags, each
// with an environment variable as fallback (SANDPIT_ plus the flag name in
// upper snake case: --dns-listen is SANDPIT_DNS_LISTEN; repeatable flags
// take a comma-separated list there).
package config

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sandpit-run/sandpit/services/daemon/envflag"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/decide"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dialer"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/dns"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/mitm"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/proxy"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Config is the proxy's whole configuration.
type Config struct {
	Listen        string
	DNSListen     string
	GRPCListen    string
	MetricsListen string
	LogLevel      string

	// Decider is how the executor's decision service is reached.
	Decider       decide.TransportConfig
	DecideTimeout time.Duration
	// Limits bound each sandbox address's questions; DNSWorkers answer
	// UDP queries.
	Limits     decide.Limits
	DNSWorkers int

	CACert, CAKey, CADir string
	LeafCacheSize        int
	// LeafMintRate and LeafMintBurst bound the new leaves one sandbox
	// address may have minted; a rate of 0 disables the bound.
	LeafMintRate  float64
	LeafMintBurst int

	Upstreams         map[string]string
	UpstreamAllow     []netip.Prefix
	UpstreamCA        string
	AllowPrivateHosts []string

	DNSAnswerIP netip.Addr

	UpstreamResponseHeaderTimeout time.Duration
	UpstreamIdleTimeout           time.Duration

	MaxConnsPerSource int

	WebSocket proxy.WebSocketLimits
	// PassthroughIdleTimeout closes a spliced TLS connection idle that
	// long.
	PassthroughIdleTimeout time.Duration

	RedactQueryParams []string
}

// list is a repeatable flag; its environment variable is comma-separated.
type list []string

func (l *list) Repeatable() {}

func (l *list) String() string { return strings.Join(*l, ",") }
func (l *list) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// DefaultDecider is the executor's default --decision-listen.
const DefaultDecider = "unix:///run/sandpit/executor/decision.sock"

// Parse reads args (without the program name) and the environment.
func Parse(args []string, getenv func(string) string) (Config, error) {
	c := Config{Upstreams: map[string]string{}}
	fs := flag.NewFlagSet("sandpit-egress-proxy", flag.ContinueOnError)
	fs.StringVar(&c.Listen, "listen", "0.0.0.0:15001", "transparent listener the executor's nftables redirect every sandbox TCP connection to")
	fs.StringVar(&c.DNSListen, "dns-listen", ":15053", "UDP and TCP address of the sandboxes' DNS server")
	fs.StringVar(&c.GRPCListen, "grpc-listen", "127.0.0.1:50052", "gRPC listen address of health (SERVING while the decide stream is open) and reflection")
	fs.StringVar(&c.MetricsListen, "metrics-listen", "127.0.0.1:9465", "HTTP listen address of /metrics; empty disables it")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.Decider.Target, "decider", DefaultDecider, "gRPC target of the executor's DecisionService, which the proxy dials and says hello to: unix:///path (the executor's --decision-listen socket, which admits its --proxy-user alone), or host:port with mutual TLS (--decider-tls-cert, --decider-tls-key, --decider-ca) or --decider-insecure-tcp")
	fs.StringVar(&c.Decider.CertFile, "decider-tls-cert", "", "PEM client certificate the proxy shows the executor on a TCP --decider (it must name the executor's --decision-proxy-identity)")
	fs.StringVar(&c.Decider.KeyFile, "decider-tls-key", "", "PEM private key of --decider-tls-cert")
	fs.StringVar(&c.Decider.CAFile, "decider-ca", "", "PEM CA bundle the executor's certificate must chain to")
	fs.StringVar(&c.Decider.ServerName, "decider-server-name", "", "name the executor's certificate must carry, when not --decider's host")
	fs.BoolVar(&c.Decider.InsecureTCP, "decider-insecure-tcp", false, "dial a TCP --decider in the clear; for tests only")
	fs.DurationVar(&c.DecideTimeout, "decide-timeout", 2*time.Second, "how long a request waits for its verdict before it is denied")
	fs.Float64Var(&c.Limits.HTTPRate, "http-rate", decide.DefaultHTTPRate, "HTTP requests per second one sandbox address may have decided (token bucket); over it they get 429 at once; 0 disables")
	fs.IntVar(&c.Limits.HTTPBurst, "http-burst", decide.DefaultHTTPBurst, "depth of the http-rate bucket")
	fs.IntVar(&c.Limits.HTTPInFlight, "http-in-flight", decide.DefaultHTTPInFlight, "HTTP requests of one sandbox address waiting for their verdict at once (the one in-flight bound); more get 429 at once, without the executor being asked; 0 disables")
	fs.Float64Var(&c.Limits.DNSRate, "dns-rate", decide.DefaultDNSRate, "DNS queries per second one sandbox address may have decided (token bucket); over it they get REFUSED at once; 0 disables")
	fs.IntVar(&c.Limits.DNSBurst, "dns-burst", decide.DefaultDNSBurst, "depth of the dns-rate bucket")
	fs.IntVar(&c.Limits.DNSInFlight, "dns-in-flight", decide.DefaultDNSInFlight, "DNS queries of one sandbox address waiting for their verdict at once; more get REFUSED at once; 0 disables")
	fs.IntVar(&c.DNSWorkers, "dns-workers", dns.Workers, "UDP DNS queries answered at once, by a pool of this many workers; when they and the queue are busy a query gets SERVFAIL")
	fs.StringVar(&c.CACert, "ca-cert", "", "PEM CA certificate to mint leaves from (with --ca-key)")
	fs.StringVar(&c.CAKey, "ca-key", "", "PEM private key of --ca-cert")
	fs.StringVar(&c.CADir, "ca-dir", "", "directory holding ca.pem and ca-key.pem, generated there when missing; without it and --ca-cert a fresh CA is made at each start")
	fs.IntVar(&c.LeafCacheSize, "leaf-cache-size", mitm.DefaultLeafCacheSize, "minted leaf certificates kept (LRU)")
	fs.Float64Var(&c.LeafMintRate, "leaf-mint-rate", proxy.DefaultLeafMintRate, "new leaf certificates per second one sandbox address may have minted (token bucket); over it the handshake is refused; 0 disables")
	fs.IntVar(&c.LeafMintBurst, "leaf-mint-burst", proxy.DefaultLeafMintBurst, "depth of the leaf-mint-rate bucket")
	var upstreams, allow, private, redQ list
	fs.Var(&upstreams, "upstream", "host=addr:port: send requests for host there instead of resolving it (repeatable)")
	fs.Var(&allow, "upstream-allow", "CIDR: when given, the only addresses ever dialed upstream (repeatable)")
	fs.StringVar(&c.UpstreamCA, "upstream-ca", "", "PEM bundle trusted for upstream TLS besides the system roots")
	fs.Var(&private, "allow-private-host", "host name that may resolve to private or other special-purpose addresses (repeatable)")
	answer := fs.String("dns-answer-ip", "198.18.0.1", "IPv4 address allowed names resolve to; the executor routes it to the proxy")
	fs.DurationVar(&c.UpstreamResponseHeaderTimeout, "upstream-response-header-timeout", proxy.DefaultResponseHeaderTimeout, "how long an allowed request waits for the upstream's response head before the sandbox gets a 502")
	fs.DurationVar(&c.UpstreamIdleTimeout, "upstream-idle-timeout", proxy.DefaultUpstreamIdleTimeout, "how long an idle upstream connection is kept for reuse")
	fs.IntVar(&c.MaxConnsPerSource, "max-conns-per-source", proxy.DefaultMaxConnsPerSource, "connections one source address (sandbox) may hold open; more are refused")
	c.WebSocket = proxy.WebSocketLimits{MaxSentBytes: proxy.DefaultWebSocketMaxSentBytes, MaxReceivedBytes: proxy.DefaultWebSocketMaxReceivedBytes}
	fs.Var(byteSize{&c.WebSocket.MaxSentBytes}, "websocket-max-sent-bytes", "bytes a sandbox may send over one WebSocket when its policy sets no limits.max_request_bytes (which bounds them otherwise), frames and their headers counted; past it the relay is cut (bytes, or with KiB/MiB/GiB)")
	fs.Var(byteSize{&c.WebSocket.MaxReceivedBytes}, "websocket-max-received-bytes", "bytes one WebSocket may carry to the sandbox; past it the relay is cut (bytes, or with KiB/MiB/GiB)")
	fs.DurationVar(&c.WebSocket.IdleTimeout, "websocket-idle-timeout", proxy.DefaultWebSocketIdleTimeout, "a WebSocket on which nothing moved either way for this long is closed")
	fs.DurationVar(&c.PassthroughIdleTimeout, "passthrough-idle-timeout", proxy.DefaultPassthroughIdleTimeout, "a TLS pass-through connection on which nothing moved either way for this long is closed")
	fs.Var(&redQ, "redact-query-param", "extra query parameter name to redact (repeatable)")

	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var errs []error
	if err := envflag.Apply(fs, getenv); err != nil {
		errs = append(errs, err)
	}
	for _, u := range upstreams {
		host, addr, err := dialer.ParseOverride(u)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c.Upstreams[host] = addr
	}
	for _, a := range allow {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("upstream-allow %q: %w", a, err))
			continue
		}
		c.UpstreamAllow = append(c.UpstreamAllow, p.Masked())
	}
	for _, h := range private {
		c.AllowPrivateHosts = append(c.AllowPrivateHosts, strings.ToLower(strings.TrimSuffix(h, ".")))
	}
	ip, err := netip.ParseAddr(*answer)
	if err != nil || !ip.Is4() {
		errs = append(errs, fmt.Errorf("dns-answer-ip %q: want an IPv4 address", *answer))
	}
	c.DNSAnswerIP = ip
	if (c.CACert == "") != (c.CAKey == "") {
		errs = append(errs, errors.New("ca-cert and ca-key go together"))
	}
	if err := c.Decider.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DecideTimeout <= 0 {
		errs = append(errs, errors.New("decide-timeout must be positive"))
	}
	if c.UpstreamResponseHeaderTimeout <= 0 {
		errs = append(errs, errors.New("upstream-response-header-timeout must be positive"))
	}
	if c.UpstreamIdleTimeout <= 0 {
		errs = append(errs, errors.New("upstream-idle-timeout must be positive"))
	}
	if c.PassthroughIdleTimeout <= 0 {
		errs = append(errs, errors.New("passthrough-idle-timeout must be positive"))
	}
	if c.MaxConnsPerSource <= 0 {
		errs = append(errs, errors.New("max-conns-per-source must be positive"))
	}
	if c.WebSocket.MaxSentBytes == 0 || c.WebSocket.MaxReceivedBytes == 0 || c.WebSocket.IdleTimeout <= 0 {
		errs = append(errs, errors.New("websocket-max-sent-bytes, websocket-max-received-bytes and websocket-idle-timeout must be positive"))
	}
	if c.Limits.HTTPRate < 0 || c.Limits.HTTPBurst < 0 || c.Limits.HTTPInFlight < 0 ||
		c.Limits.DNSRate < 0 || c.Limits.DNSBurst < 0 || c.Limits.DNSInFlight < 0 {
		errs = append(errs, errors.New("http-rate, http-burst, http-in-flight, dns-rate, dns-burst and dns-in-flight must not be negative"))
	}
	if c.LeafCacheSize < 1 {
		errs = append(errs, errors.New("leaf-cache-size must be at least 1"))
	}
	if c.LeafMintRate < 0 || c.LeafMintBurst < 1 {
		errs = append(errs, errors.New("leaf-mint-rate must not be negative and leaf-mint-burst must be at least 1"))
	}
	if c.DNSWorkers < 1 {
		errs = append(errs, errors.New("dns-workers must be at least 1"))
	}
	c.RedactQueryParams = redQ
	return c, errors.Join(errs...)
}

// byteSize is a flag of bytes, as a number or with a binary unit (64KiB,
// 1MiB), as a policy file writes them.
type byteSize struct{ n *uint64 }

func (b byteSize) String() string {
	if b.n == nil {
		return ""
	}
	return policy.FormatByteSize(*b.n)
}

func (b byteSize) Set(s string) error {
	n, err := policy.ParseByteSize(s)
	if err != nil {
		return err
	}
	*b.n = n
	return nil
}
