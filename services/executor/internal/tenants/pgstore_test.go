//go:build integration

package tenants

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sandpit-run/sandpit/services/daemon/pgtest"
)

// startPostgres runs a PostgreSQL server of the test's own and returns its
// DSN (see pgtest).
func startPostgres(t *testing.T) string { return pgtest.Start(t).DSN }

// pgBackend writes tenants into the database in one transaction.
type pgBackend struct {
	pool  *pgxpool.Pool
	store *PGStore
}

func (p *pgBackend) put(t *testing.T, ts []tenantDoc) {
	t.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM sandpit_tenants`); err != nil {
			return err
		}
		null := func(s string) any {
			if s == "" {
				return nil
			}
			return s
		}
		for _, td := range ts {
			mode := td.Mode
			if mode == "" {
				mode = "enforce"
			}
			l := td.Limits
			if _, err := tx.Exec(ctx, `INSERT INTO sandpit_tenants (tenant, mode, policy, max_concurrent, executions_per_minute, max_timeout, max_memory, max_requests)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, td.Tenant, mode, td.Policy, l.MaxConcurrent, l.ExecutionsPerMinute, null(l.MaxTimeout), null(l.MaxMemory), l.MaxRequests); err != nil {
				return err
			}
			for _, tr := range td.Tiers {
				l := tr.Limits
				if _, err := tx.Exec(ctx, `INSERT INTO sandpit_tiers (tenant, tier, policy, max_concurrent, executions_per_minute, max_timeout, max_memory, max_requests)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, td.Tenant, tr.Tier, null(tr.Policy), l.MaxConcurrent, l.ExecutionsPerMinute, null(l.MaxTimeout), null(l.MaxMemory), l.MaxRequests); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("write tenants: %v", err)
	}
}

// settle polls: the store follows the database's notifications on its own.
func (p *pgBackend) settle(t *testing.T, what string, ok func(Source) bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(p.store); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen 5s after the commit (problem %q)", what, p.store.Problem())
		}
	}
}

func (p *pgBackend) source() Source         { return p.store }
func (p *pgBackend) metrics() reloadMetrics { return p.store.m }

// TestPostgresStoreSuite runs the file store's suite against a real
// PostgreSQL: changes arrive by NOTIFY, without restart.
func TestPostgresStoreSuite(t *testing.T) {
	dsn := startPostgres(t)
	ctx := context.Background()
	s, err := OpenPostgres(ctx, dsn, nil, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	runStoreSuite(t, &pgBackend{pool: pool, store: s})

	// Migrating again (a second executor, a restart) changes nothing.
	if err := Migrate(ctx, pool); err != nil {
		t.Fatalf("second migration: %v", err)
	}
	var n int
	files, _ := fs.Glob(migrations, "migrations/*.sql")
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM sandpit_schema_migrations`).Scan(&n); err != nil || n != len(files) || n < 2 {
		t.Errorf("migrations recorded: %d, %v; want one each of %d", n, err, len(files))
	}
}

// TestPostgresStoreKeepsItsTenantsWhileTheDatabaseIsGone stops the server
// under a running store: the tenants in force stay, Problem says the
// database is unreachable.
func TestPostgresStoreKeepsItsTenantsWhileTheDatabaseIsGone(t *testing.T) {
	dsn := startPostgres(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	b := &pgBackend{pool: pool}
	b.put(t, []tenantDoc{{Tenant: "acme", Policy: stripePolicy}})
	s, err := OpenPostgres(ctx, dsn, nil, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b.store = s
	// Every other connection goes, the store's LISTEN among them.
	if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'`); err != nil {
		t.Fatal(err)
	}
	pool.Close()
	b.settle(t, "the lost connection reported", func(s Source) bool { return s.Problem() != "" })
	if _, err := s.Current().Lookup("acme", ""); err != nil {
		t.Errorf("acme gone with the connection: %v", err)
	}
	// It comes back by itself and reads what changed meanwhile.
	pool2, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool2.Close()
	b.pool = pool2
	b.put(t, []tenantDoc{{Tenant: "acme", Policy: stripePolicy}, {Tenant: "globex", Policy: noCharges}})
	b.settle(t, "reconnected and reloaded", func(s Source) bool {
		_, err := s.Current().Lookup("globex", "")
		return err == nil && s.Problem() == ""
	})
}

// lockedBuffer is a log's output, written by the store's goroutine and read
// by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPostgresStoreSecrets: a tenant's secret in sandpit_secrets is served
// to it alone; an update is served after the NOTIFY reload; the CHECKs
// refuse a bad name, an empty or oversized value and an unknown tenant; a
// value with a control character gets past them and keeps the last good
// version in force, naming the row, until it is removed; a removed tenant's
// secrets go with it. No value appears in the store's log or its problem.
func TestPostgresStoreSecrets(t *testing.T) {
	dsn := startPostgres(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	exec := func(sql string, args ...any) error {
		_, err := pool.Exec(ctx, sql, args...)
		return err
	}
	const (
		first  = "sk_live_FIRSTvalueDoNotLeak0123"
		second = "sk_live_SECONDvalueDoNotLeak456"
		other  = "sk-GLOBEXvalueDoNotLeak789"
		broken = "sk_live_BROKENvalue\r\nX-Injected: 1"
	)
	b := &pgBackend{pool: pool}
	b.put(t, []tenantDoc{{Tenant: "acme", Policy: stripePolicy}, {Tenant: "globex", Policy: noCharges}})
	insert := `INSERT INTO sandpit_secrets (tenant, name, value) VALUES ($1, $2, $3)`
	for _, row := range [][3]string{{"acme", "stripe", first}, {"globex", "openai", other}} {
		if err := exec(insert, row[0], row[1], []byte(row[2])); err != nil {
			t.Fatal(err)
		}
	}
	var logs lockedBuffer
	s, err := OpenPostgres(ctx, dsn, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b.store = s
	value := func(tenant, name string) string {
		v, ok := s.Secret(tenant, name)
		if !ok {
			return "<none>"
		}
		return string(v)
	}
	for _, tt := range [][3]string{
		{"acme", "stripe", first}, {"globex", "openai", other},
		{"acme", "openai", "<none>"}, {"globex", "stripe", "<none>"}, {"", "stripe", "<none>"},
	} {
		if got := value(tt[0], tt[1]); got != tt[2] {
			t.Errorf("Secret(%q, %q) = %q; want %q", tt[0], tt[1], got, tt[2])
		}
	}

	if err := exec(`UPDATE sandpit_secrets SET value = $1 WHERE tenant = 'acme' AND name = 'stripe'`, []byte(second)); err != nil {
		t.Fatal(err)
	}
	b.settle(t, "the updated value", func(Source) bool { return value("acme", "stripe") == second })

	for _, bad := range []struct {
		what         string
		tenant, name string
		value        []byte
	}{
		{"a bad name", "acme", "Bad/Name", []byte("x")},
		{"a name too long", "acme", strings.Repeat("n", 65), []byte("x")},
		{"an empty value", "acme", "empty", []byte{}},
		{"an oversized value", "acme", "big", bytes.Repeat([]byte("k"), MaxSecretBytes+1)},
		{"an unknown tenant", "initech", "stripe", []byte("x")},
	} {
		if err := exec(insert, bad.tenant, bad.name, bad.value); err == nil {
			t.Errorf("%s was inserted", bad.what)
		}
	}
	if err := exec(insert, "acme", "largest", bytes.Repeat([]byte("k"), MaxSecretBytes)); err != nil {
		t.Errorf("a value of %d bytes: %v", MaxSecretBytes, err)
	}
	b.settle(t, "the largest value", func(Source) bool { return len(value("acme", "largest")) == MaxSecretBytes })

	if err := exec(insert, "acme", "github", []byte(broken)); err != nil {
		t.Fatal(err)
	}
	b.settle(t, "the broken row reported", func(s Source) bool { return s.Problem() != "" })
	problem := s.Problem()
	if p := problem; !strings.Contains(p, `"acme", "github"`) || !strings.Contains(p, "control character") ||
		value("acme", "stripe") != second || value("acme", "github") != "<none>" {
		t.Errorf("after a control character: problem %q, stripe %q, github %q; want the row named and the last good version", p, value("acme", "stripe"), value("acme", "github"))
	}
	if err := exec(`DELETE FROM sandpit_secrets WHERE name = 'github'`); err != nil {
		t.Fatal(err)
	}
	b.settle(t, "the fix", func(s Source) bool { return s.Problem() == "" })

	if err := exec(`DELETE FROM sandpit_tenants WHERE tenant = 'acme'`); err != nil {
		t.Fatal(err)
	}
	b.settle(t, "acme removed", func(Source) bool { return value("acme", "stripe") == "<none>" })
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM sandpit_secrets WHERE tenant = 'acme'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("acme's secrets left after acme: %d, %v", n, err)
	}
	if value("globex", "openai") != other {
		t.Errorf("globex's secret went with acme: %q", value("globex", "openai"))
	}

	out := logs.String() + problem
	if !strings.Contains(out, "secrets=") || !strings.Contains(out, "control character") {
		t.Fatalf("the log does not show the reloads and the refusal:\n%s", out)
	}
	for _, v := range []string{first, second, other, broken} {
		for _, leak := range []string{v, v[:16], fmt.Sprintf("%x", v[:16])} {
			if strings.Contains(out, leak) {
				t.Errorf("the store's log or problem holds a value (%q):\n%s", leak, out)
			}
		}
	}
}
