//go:build integration

package tenants

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// startPostgres runs a PostgreSQL server of the test's own (Debian's
// package: make test installs it) in a fresh data directory, listening
// only on a unix socket in that directory, and returns its DSN. As root it
// runs the server as nobody (PostgreSQL refuses to run as root). Under CI a
// missing server fails the test; elsewhere it skips.
func startPostgres(t *testing.T) string {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("no PostgreSQL server in /usr/lib/postgresql (make test installs Debian's postgresql)")
		}
		t.Skip("no PostgreSQL server (apt-get install postgresql)")
	}
	sort.Strings(bins)
	bin := filepath.Dir(bins[len(bins)-1])
	dir, err := os.MkdirTemp("", "sandpit-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	command := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Env = []string{"LC_ALL=C", "PATH=/usr/bin:/bin"}
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
		return cmd
	}
	data := filepath.Join(dir, "data")
	if out, err := command("initdb", "-D", data, "-U", "sandpit", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	log, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	srv := command("postgres", "-D", data, "-k", dir, "-c", "listen_addresses=", "-p", "5432", "-c", "fsync=off")
	srv.Stdout, srv.Stderr = log, log
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = srv.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = srv.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = srv.Process.Kill()
			<-exited
		}
	})
	dsn := fmt.Sprintf("host=%s port=5432 user=sandpit dbname=postgres sslmode=disable", dir)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		conn, err := pgx.Connect(context.Background(), dsn)
		if err == nil {
			conn.Close(context.Background())
			return dsn
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(log.Name())
			t.Fatalf("postgres exited: %s", out)
		default:
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(log.Name())
			t.Fatalf("postgres did not accept connections in 20s: %v\n%s", err, out)
		}
	}
}

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
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM sandpit_schema_migrations`).Scan(&n); err != nil || n != 1 {
		t.Errorf("migrations recorded: %d, %v; want 1", n, err)
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
