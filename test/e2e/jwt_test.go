package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/test/internal/containerdtest"
)

const jwtSecret = "the e2e tests' HS256 secret, 32+ bytes"

// bearer is call metadata with jwtToken.
func bearer(t *testing.T, domains ...string) context.Context {
	t.Helper()
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+jwtToken(t, domains...))
}

// jwtToken is an HS256 token of the prototype's payload shape for tenant
// user_123, tier pro, limited to domains.
func jwtToken(t *testing.T, domains ...string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "user_123", "tier": "pro", "iss": "e2e", "aud": "sandpit",
		"exp": time.Now().Add(time.Hour).Unix(), "allowedDomains": domains,
	}).SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestJWTIdentityNarrowsEgress runs a JWT-enabled executor with the proxy
// and real sandboxes: no token is Unauthenticated, health stays open, a
// token's identity is in Started, network events and the log, and its allowedDomains blocks
// a host the operator's policy allows.
func TestJWTIdentityNarrowsEgress(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "jwt-secret")
	if err := os.WriteFile(secret, []byte(jwtSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	logs := &lockedBuffer{}
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, basePolicy), logs: logs,
		flags: []string{"--jwt-hs256-secret-file", secret, "--jwt-issuer", "e2e", "--jwt-audience", "sandpit"}})
	// A plain-HTTP stand-in: the request is decided per request, where the
	// token's rule shows, not refused at a TLS handshake.
	var hits atomic.Int64
	github := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hits.Add(1) }))
	t.Cleanup(github.Close)
	p := startProxy(t, ports, e.deciderAddr, map[string]string{"api.github.test": github.Listener.Addr().String()}, upstreamCAPEM(t))
	e.waitProxy(t, p)

	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health without a token: %v", err)
	}
	// As the README shows it: grpcurl through reflection, with and
	// without a token.
	grpcurl, err := containerdtest.Artifact("SANDPIT_GRPCURL", "bin/grpcurl")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(grpcurl, "-plaintext", e.addr, "grpc.health.v1.Health/Check").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SERVING") {
		t.Errorf("grpcurl health without a token: %v\n%s", err, out)
	}
	out, err = exec.Command(grpcurl, "-plaintext", "-H", "authorization: Bearer "+jwtToken(t), "-d", `{"code": "console.log(1)"}`,
		e.addr, "sandpit.executor.v1.ExecutorService/Execute").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"tenant": "user_123"`) || !strings.Contains(string(out), `"result"`) {
		t.Errorf("grpcurl Execute with a token: %v\n%s", err, out)
	}
	out, err = exec.Command(grpcurl, "-plaintext", "-d", `{"code": "console.log(1)"}`,
		e.addr, "sandpit.executor.v1.ExecutorService/Execute").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Unauthenticated") {
		t.Errorf("grpcurl Execute without a token: %v\n%s", err, out)
	}

	r := e.execute(context.Background(), code(`console.log("ran")`))
	var reason string
	for _, d := range status.Convert(r.err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			reason = info.GetReason()
		}
	}
	if status.Code(r.err) != codes.Unauthenticated || reason != "TOKEN_MISSING" || len(r.stdout) > 0 {
		t.Fatalf("Execute without a token: %v (reason %q), stdout %q; want Unauthenticated TOKEN_MISSING and nothing run", r.err, reason, r.stdout)
	}

	// Plain HTTP to the gateway with Host api.github.test: the operator's
	// policy allows it (http and every path); DNS would already refuse the
	// name to a token that does not allow it.
	req := code(`
const net = require("net"), os = require("os");
const gw = os.networkInterfaces().eth0.find(a => a.family === "IPv4").address.replace(/\.\d+$/, m => "." + (Number(m.slice(1)) - 1));
const s = net.connect(80, gw, () => s.write("GET /repos HTTP/1.1\r\nHost: api.github.test\r\nConnection: close\r\n\r\n"));
let data = "";
s.on("data", d => data += d);
s.on("end", () => console.log(JSON.stringify({ status: data.split("\r\n")[0] })));
s.on("error", e => console.log(JSON.stringify({ status: e.code })));
`)
	req.Policy = &policyv1.Policy{DefaultAction: policyv1.Action_ACTION_ALLOW}
	run := func(ctx context.Context) (string, *run) {
		t.Helper()
		r := e.execute(ctx, req)
		if r.err != nil || r.result == nil {
			t.Fatalf("Execute: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
		}
		if s := r.started; s.GetTenant() != "user_123" || s.GetTier() != "pro" {
			t.Errorf("Started %v: want tenant user_123, tier pro", s)
		}
		return string(r.stdout), r
	}

	// The control: a token that allows the host reaches it.
	got, _ := run(bearer(t, "pay.test", "*.github.test"))
	if !strings.Contains(got, "200") || hits.Load() != 1 {
		t.Fatalf("a token allowing api.github.test: %s, stand-in hits %d; want 200 and one hit", got, hits.Load())
	}
	got, r = run(bearer(t, "pay.test"))
	if strings.Contains(got, "200") || hits.Load() != 1 {
		t.Errorf("a token without api.github.test: %s, stand-in hits %d; want it blocked", got, hits.Load())
	}
	var blocked *executorv1.NetworkEvent
	for _, ev := range requestEvents(r, executorv1.NetworkEventKind_NETWORK_EVENT_KIND_REQUEST) {
		if ev.GetHost() == "api.github.test" {
			blocked = ev
		}
	}
	if blocked.GetDecision() != policyv1.Decision_DECISION_DENY || blocked.GetRuleId() != "token.allowedDomains" ||
		!strings.Contains(blocked.GetReason(), "token does not allow host api.github.test") ||
		blocked.GetTenant() != "user_123" || blocked.GetTier() != "pro" {
		t.Errorf("network event %v: want a deny by token.allowedDomains saying the token does not allow the host, for user_123 (pro)", blocked)
	}
	if r.result.GetRequestsBlocked() != 1 {
		t.Errorf("requests blocked %d, want 1", r.result.GetRequestsBlocked())
	}
	if l := logs.String(); !strings.Contains(l, `"tenant":"user_123"`) || !strings.Contains(l, `"tier":"pro"`) {
		t.Error(`the executor's log does not name tenant user_123 and tier pro`)
	}
}
