package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Sandbox networks of the e2e tests: their own pool, prefixes and table,
// apart from a real executor's ("sandpit-", "sp") and from other test
// packages'; no prefix here is a prefix of another's.
const (
	testPool       = "10.89.0.0/24"
	testVethPrefix = "se"
	testNetns      = "spe2e-"
	testTable      = "sandpit_e2e"
)

// netPorts are the proxy's ports: its health listener, and the host ports
// nftables sends sandbox traffic to.
type netPorts struct {
	proxyGRPC          string
	proxyPort, dnsPort uint16
}

// handedOut holds the ports freePort has returned.
var handedOut sync.Map

// freePort returns a port that is free for TCP and UDP on all addresses,
// for a server another process will bind. It is taken below the kernel's
// ephemeral range: a port from the ephemeral range, freed again, can be
// handed to any outgoing connection or ":0" listener before the server
// binds it.
func freePort(t testing.TB) uint16 {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	const floor = 10000
	if low <= floor+1000 {
		t.Fatalf("ephemeral port range starts at %d; no room below it for test servers", low)
	}
	for range 200 {
		port := floor + rand.IntN(low-floor)
		// Never the same port twice in a run: one handed out earlier may
		// be free now and about to be bound by the server it was for.
		if _, taken := handedOut.LoadOrStore(port, true); taken {
			continue
		}
		l, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return uint16(port)
	}
	t.Fatal("no free port found below the ephemeral range")
	return 0
}

// egressOpts are the executor flags of the tests' egress: their own pool,
// prefixes and table, the proxy's ports, the operator's policy.
type egressOpts struct {
	ports      netPorts
	policyFile string
	// decisionSocket is where the executor serves decisions, a unix
	// socket only the proxy's user (here root) may open.
	decisionSocket string
}

func (o *egressOpts) flags() []string {
	f := []string{
		"--egress",
		"--decision-listen", "unix://" + o.decisionSocket,
		"--proxy-port", itoa(o.ports.proxyPort),
		"--dns-port", itoa(o.ports.dnsPort),
		"--address-pool", testPool,
		"--nft-table", testTable,
		"--veth-prefix", testVethPrefix,
		"--netns-prefix", testNetns,
		// The harness runs the proxy binary as root (the test's own
		// uid): the metadata guard is tested on its own in the
		// firewall's integration tests, the decision socket's peer check
		// in decisionlisten's and TestOnlyTheProxyOpensTheDecideStream.
		"--proxy-user", "root",
	}
	if o.policyFile != "" {
		f = append(f, "--policy-file", o.policyFile)
	}
	return f
}

// startEgress says how the executor's side of egress is set up:
// namespaces, nftables, the policy file. The proxy may or may not be
// running at ports.
func startEgress(t testing.TB, ports netPorts, policyYAML string) *egressOpts {
	t.Helper()
	o := &egressOpts{ports: ports, decisionSocket: shortSocketPath(t, "decision.sock")}
	if policyYAML != "" {
		o.policyFile = filepath.Join(t.TempDir(), "policy.yaml")
		if err := os.WriteFile(o.policyFile, []byte(policyYAML), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return o
}

// shortSocketPath is a path for a unix socket named name in a directory
// removed when the test ends: short, as socket paths have at most 107 bytes
// and t.TempDir's grow with the test's name.
func shortSocketPath(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sandpit-sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, name)
}

// networkLeftovers lists the namespaces and veths of the tests that are
// still there.
func networkLeftovers() []string {
	var out []string
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), testNetns) {
			out = append(out, "namespace "+e.Name())
		}
	}
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, testVethPrefix) {
			out = append(out, "veth "+i.Name)
		}
	}
	return out
}

// requireNoNetworkLeftovers fails if a namespace or veth of the tests is
// still there.
func requireNoNetworkLeftovers(t *testing.T) {
	t.Helper()
	for _, l := range networkLeftovers() {
		t.Errorf("%s left behind", l)
	}
}

// TestProxyDownMeansNoEgress runs a sandbox with egress configured but no
// proxy listening: it has its veth and route, but every connection and DNS
// query goes nowhere, and the result says why.
func TestProxyDownMeansNoEgress(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	eg := startEgress(t, ports, "version: 1\ndefault: allow\n")
	e := startExecutor(t, executorOpts{egress: eg})
	var got struct {
		Ifaces []string
		Fetch  string
		DNS    string
		CA     string
	}
	probe(t, e, code(`
const fs = require("fs");
const ifaces = fs.readFileSync("/proc/net/dev", "utf8").split("\n").slice(2).filter(Boolean).map(l => l.split(":")[0].trim()).sort();
const out = {ifaces, ca: process.env.NODE_EXTRA_CA_CERTS || ""};
require("dns").lookup("api.stripe.com", (err) => {
  out.dns = err ? err.code : "resolved";
  fetch("http://api.stripe.com/v1/products", {signal: AbortSignal.timeout(3000)})
    .then(r => { out.fetch = "status " + r.status; })
    .catch(e => { out.fetch = (e.cause && e.cause.code) || e.name; })
    .finally(() => console.log(JSON.stringify(out)));
});
`), &got)
	if strings.Join(got.Ifaces, ",") != "eth0,lo" {
		t.Errorf("interfaces %v, want eth0 and lo", got.Ifaces)
	}
	if got.DNS == "resolved" || got.Fetch == "" || strings.HasPrefix(got.Fetch, "status") {
		t.Errorf("with the proxy down: dns %q, fetch %q; want both to fail", got.DNS, got.Fetch)
	}
	if got.CA != "" {
		t.Errorf("NODE_EXTRA_CA_CERTS=%q without a proxy CA", got.CA)
	}
	r := e.mustRun(t, code(`1`))
	if !strings.Contains(r.result.GetNetworkError(), "egress proxy unavailable") {
		t.Errorf("network_error %q, want it to say the proxy is unavailable", r.result.GetNetworkError())
	}
	requireNoLeftovers(t, stateDir, "")
	requireNoNetworkLeftovers(t)
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
