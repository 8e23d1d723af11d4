package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"github.com/sandpit-run/sandpit/services/daemon/pgtest"
)

// TestTenantSecretsFromPostgres: with --policy-store, a tenant's secret in
// sandpit_secrets reaches its bound stand-in for that tenant alone; a new
// value is used once the database notifies the change, without a restart;
// a --secrets-dir file wins over a row of the same tenant and name; a
// tenant naming a secret only another tenant has is refused with
// SECRET_NOT_ALLOWED before anything runs; no value is in the executor's
// or the proxy's log.
func TestTenantSecretsFromPostgres(t *testing.T) {
	const (
		acmeFirst  = "ghp_AcmeFromPostgres0000000000000000000"
		acmeSecond = "ghp_AcmeUpdatedInPostgres00000000000000"
		globexRow  = "ghp_GlobexRowTheFileOverrides0000000000"
		globexFile = "ghp_GlobexFileWinsOverTheRow00000000000"
		acmeStripe = "sk_live_AcmeStripeFromPostgres000000000"
	)
	pg := pgtest.Start(t)
	dir := t.TempDir()
	for name, content := range map[string]string{"jwt-secret": jwtSecret, "secrets/globex/github": globexFile} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ports := netPorts{proxyGRPC: "127.0.0.1:" + itoa(freePort(t)), proxyPort: freePort(t), dnsPort: freePort(t)}
	logs := &lockedBuffer{}
	e := startExecutor(t, executorOpts{egress: startEgress(t, ports, ""), logs: logs, allow: []string{sdkImage}, flags: []string{
		"--jwt-hs256-secret-file", filepath.Join(dir, "jwt-secret"), "--jwt-issuer", "e2e", "--jwt-audience", "sandpit",
		"--policy-store", pg.URL(), "--secrets-dir", filepath.Join(dir, "secrets"),
	}})
	// The executor migrated the database at start; the rows go in now.
	policy := "'" + strings.ReplaceAll(tenantSecretsPolicy, "'", "''") + "'"
	pg.Exec(t, "INSERT INTO sandpit_tenants (tenant, policy) VALUES ('acme', "+policy+"), ('globex', "+policy+")")
	pg.Exec(t, "INSERT INTO sandpit_secrets (tenant, name, value) VALUES ('acme', 'github', '"+acmeFirst+"'), "+
		"('acme', 'stripe', '"+acmeStripe+"'), ('globex', 'github', '"+globexRow+"')")
	addr, seen := keyChecker(t, githubBody, acmeFirst, acmeSecond, globexFile)
	p := startProxy(t, ports, e.deciderAddr, map[string]string{"api.github.test": addr}, upstreamCAPEM(t))
	e.waitProxy(t, p)

	// github runs tenant's code with its github secret until the stand-in
	// sees want (the rows arrive by NOTIFY, so the first tries may not
	// have them), and checks the sandbox got 200 and a placeholder.
	github := func(tenant, want string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			r := e.execute(asTenant(t, tenant, ""), &executorv1.ExecuteRequest{Image: sdkImage, Code: githubTokenJS, Secrets: map[string]string{"GITHUB_TOKEN": "github"}})
			s := seen()
			if r.err == nil && strings.Contains(s[len(s)-1], "auth=Bearer "+want+" ") {
				var got struct {
					Status int
					Token  string
				}
				if err := json.Unmarshal(r.stdout, &got); err != nil || got.Status != 200 || !strings.HasPrefix(got.Token, "Bearer ghp_SPX") {
					t.Errorf("%s: %s (%v), want 200 and its placeholder reflected", tenant, r.stdout, err)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the stand-in never saw its secret %.12s… (last %q, %v)", tenant, want, s[len(s)-1], r.err)
			}
		}
	}
	github("acme", acmeFirst)
	github("globex", globexFile)
	pg.Exec(t, "UPDATE sandpit_secrets SET value = '"+acmeSecond+"' WHERE tenant = 'acme' AND name = 'github'")
	github("acme", acmeSecond)

	r := e.execute(asTenant(t, "globex", ""), &executorv1.ExecuteRequest{Image: sdkImage, Code: githubTokenJS, Secrets: map[string]string{"STRIPE_KEY": "stripe"}})
	if status.Code(r.err) != codes.PermissionDenied || errorReason(t, r.err) != "SECRET_NOT_ALLOWED" || r.started != nil {
		t.Errorf("globex naming acme's stripe: %v (started %v), want PermissionDenied SECRET_NOT_ALLOWED before anything ran", r.err, r.started)
	}
	for _, v := range []string{acmeFirst, acmeSecond, globexRow, globexFile, acmeStripe} {
		if strings.Contains(logs.String(), v) || strings.Contains(p.logs.String(), v) {
			t.Errorf("%.12s… is in the executor's or the proxy's log", v)
		}
	}
	for _, line := range seen() {
		if strings.Contains(line, globexRow) {
			t.Errorf("the stand-in got globex's row, which its file overrides: %q", line)
		}
	}
}
