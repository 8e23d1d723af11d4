package e2e

import (
	"testing"
)

// refusedFromPortCode holds one connection to hang.test's port 80
// (redirected to the proxy), open 300 ms so that the proxy counts it
// first, then opens others from source port 41234, each with a request on
// it: over the proxy's bound of one connection per source, the proxy
// closes each unread. It tries until one is reset (the request was in
// before the proxy closed it; else the close is a FIN) and prints how the
// last ended and after how many tries.
const refusedFromPortCode = `
const net = require("net"), addr = require("os").networkInterfaces().eth0[0].address;
const request = "GET /hang HTTP/1.1\r\nHost: hang.test\r\n\r\n";
// connect resolves with how the connection ended, or "open" when it is
// still open after ms (and stays so).
const connect = (localPort, ms) => new Promise(res => {
  const s = net.connect({ host: "198.18.0.1", port: 80, localPort }, () => s.write(request));
  let status = "closed";
  s.on("error", e => { status = e.code; });
  s.on("close", () => res(status));
  s.resume();
  setTimeout(() => res("open"), ms);
});
(async () => {
  let held;
  for (let i = 0; i < 5 && held !== "open"; i++) held = await connect(0, 300);
  let status = "held " + held, tries = 0;
  while (held === "open" && tries++ < 50 && (status = await connect(41234, 1000)) !== "ECONNRESET") await new Promise(r => setTimeout(r, 50));
  console.log(JSON.stringify({ status, tries, addr }));
  process.exit(0);
})();
`

// fromPortCode connects from source port 41234 to hang.test's port 80 and
// prints whether it could.
const fromPortCode = `
const net = require("net"), addr = require("os").networkInterfaces().eth0[0].address;
const s = net.connect({ host: "198.18.0.1", port: 80, localPort: 41234 }, () => {
  console.log(JSON.stringify({ status: "connected", addr }));
  process.exit(0);
});
s.on("error", e => { console.log(JSON.stringify({ status: e.code, addr })); process.exit(0); });
`

// TestNextSandboxOnAnAddressInheritsNoConnections: the proxy resets a
// sandbox's connection from source port 41234 (over its per-source
// bound, see refusedFromPortCode); after the executor and the proxy stop,
// a new pair (the proxy on another port) gives the same address to a
// sandbox that connects from the same port to the same destination, and
// it reaches the new proxy. Were the pool's connection tracking kept from
// one executor to the next, the old entry (reset by the proxy's side
// alone, which conntrack does not reopen on a new SYN) would redirect the
// connection to the old proxy's port, where the kernel refuses it: the
// ECONNREFUSED that TestConnectionsPerSandboxAreBounded's sandboxes and
// neighbour sometimes saw, in the iteration after another.
func TestNextSandboxOnAnAddressInheritsNoConnections(t *testing.T) {
	steps := []struct {
		name, code, want string
	}{
		{"reset by the first proxy", refusedFromPortCode, "ECONNRESET"},
		{"connected to the second", fromPortCode, "connected"},
	}
	var addrs []string
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			s := startWedgeStack(t, "--max-conns-per-source", "1")
			var got struct {
				Status, Addr string
				Tries        int
			}
			probe(t, s.e, code(st.code), &got)
			t.Logf("proxy port %d, sandbox %s: %s (tries %d)", s.proxy.ports.proxyPort, got.Addr, got.Status, got.Tries)
			addrs = append(addrs, got.Addr)
			if got.Status != st.want {
				t.Errorf("connection from port 41234: %q, want %q", got.Status, st.want)
			}
		})
	}
	// Each new executor hands out its pool's first address first.
	if len(addrs) != 2 || addrs[0] != addrs[1] {
		t.Errorf("sandbox addresses %q, want the same twice", addrs)
	}
}
