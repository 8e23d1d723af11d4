package e2e

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
)

// The operator names the metadata addresses, so the policy allows them;
// the proxy's dialer still refuses to connect there. down.test is sent to
// a closed loopback port. The proxy dials nothing outside 127.0.0.0/8 in
// these tests (startProxy's --upstream-allow) and its own sockets cannot
// reach the metadata addresses (the executor's output rule): the refused
// requests are never dialed.
const upstreamFailurePolicy = `
version: 1
default: deny
hosts:
  - host: pay.test
    default: allow
  - host: down.test
    schemes: [https, http]
    default: allow
  - host: 168.63.129.16
    schemes: [https, http]
    default: allow
  - host: 100.100.100.200
    schemes: [https, http]
    default: allow
  - host: 169.254.169.253
    schemes: [https, http]
    default: allow
`

// TestUpstreamFailuresRevealNoDetail makes allowed requests whose upstream
// cannot be reached, from a real sandbox through the real proxy: each gets
// a 502 whose error names a class with a fixed message, never the address
// or the dial error, which only the proxy's log has. A neighbouring
// sandbox's allowed requests succeed meanwhile.
func TestUpstreamFailuresRevealNoDetail(t *testing.T) {
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	eo := startEgress(t, ports, upstreamFailurePolicy)
	e := startExecutor(t, executorOpts{egress: eo})
	pay := newStandIn(t, "pay.test")
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := closed.Addr().String()
	closed.Close()
	proxy := startProxy(t, ports, e.deciderAddr, map[string]string{"pay.test": pay.addr(), "down.test": down}, upstreamCAPEM(t))
	e.waitProxy(t, proxy)

	failing := code(`
const get = url => fetch(url).then(async r => ({ status: r.status, body: await r.text() }), e => ({ status: (e.cause && e.cause.code) || e.name }));
(async () => {
  const out = {};
  for (const [k, u] of Object.entries({
    wireserver: "http://168.63.129.16/machine?comp=goalstate",
    alibaba: "http://100.100.100.200/latest/meta-data/",
    linkLocal: "http://169.254.169.253/",
    down: "http://down.test/v1/anything",
  })) out[k] = await get(u);
  console.log(JSON.stringify(out));
})();
`)
	nb := startNeighbour(t, e)
	var got map[string]struct {
		Status any
		Body   string
	}
	probe(t, e, failing, &got)
	nb.check(t)
	t.Logf("failing: %v", got)

	tests := []struct {
		key, class string
		// hidden must appear in the proxy's log and in no body.
		hidden string
	}{
		{"wireserver", "refused", "cloud metadata (Azure WireServer)"},
		{"alibaba", "refused", "cloud metadata (Alibaba)"},
		{"linkLocal", "refused", "169.254.169.253 (link-local)"},
		{"down", "connection_refused", down},
	}
	logs := proxy.logs.String()
	for _, tt := range tests {
		r := got[tt.key]
		var body struct {
			Decision string
			Error    struct{ Type, Code, Message string }
		}
		if err := json.Unmarshal([]byte(r.Body), &body); err != nil || r.Status != float64(502) {
			t.Errorf("%s: status %v body %q, want a 502 with a JSON body", tt.key, r.Status, r.Body)
			continue
		}
		if body.Decision != "allowed" || body.Error.Type != "sandpit_upstream_error" || body.Error.Code != tt.class || body.Error.Message == "" {
			t.Errorf("%s: body %s, want an upstream error of class %s", tt.key, r.Body, tt.class)
		}
		for _, leak := range []string{tt.hidden, "127.0.0.1", "resolves to", "dial tcp", "upstream-allow"} {
			if strings.Contains(r.Body, leak) {
				t.Errorf("%s: body %s reveals %q", tt.key, r.Body, leak)
			}
		}
		if !strings.Contains(logs, tt.hidden) || !strings.Contains(logs, `"class":"`+tt.class+`"`) {
			t.Errorf("%s: the proxy's log lacks %q or class %s", tt.key, tt.hidden, tt.class)
		}
	}
}
