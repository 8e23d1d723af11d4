package e2e

import (
	"strings"
	"testing"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// TestTrailingDotHostIsRefusedWithReason: Node sends the trailing dot of
// "https://PAY.TEST./" in its SNI (lowercased: "pay.test."), which Go's
// TLS server cannot accept (RFC 6066 forbids it). The connection is refused, and the sandbox's
// network events say why and which name to use, while the same request
// without the dot succeeds.
func TestTrailingDotHostIsRefusedWithReason(t *testing.T) {
	s := startWedgeStack(t)
	r := s.e.mustRun(t, code(`
(async () => {
  const get = u => fetch(u).then(r => String(r.status), e => (e.cause && e.cause.code) || e.name);
  console.log(await get("https://PAY.TEST./v1/products/dot"), await get("https://pay.test/v1/products/plain"));
})();
`))
	out := strings.Fields(strings.TrimSpace(string(r.stdout)))
	if len(out) != 2 || out[0] == "200" || out[1] != "200" {
		t.Fatalf("output %q (stderr %s): want the dotted name refused, the plain one 200", r.stdout, r.stderr)
	}
	var reasons []string
	for _, ev := range requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REFUSED) {
		reasons = append(reasons, ev.GetReason())
	}
	if len(reasons) != 1 || !strings.Contains(reasons[0], `"pay.test." ends with a dot`) || !strings.Contains(reasons[0], `use "pay.test"`) {
		t.Fatalf("refusals %q: want one naming the dot and the canonical name", reasons)
	}
	if got := s.pay.requests(); len(got) != 1 || !strings.Contains(got[0], "/v1/products/plain") {
		t.Fatalf("pay.test got %v, want only the plain request", got)
	}
}
