package tenants

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sandpit-run/sandpit/services/policy"
)

// notifyChannel is what the migrations' triggers notify on every change.
const notifyChannel = "sandpit_tenants"

//go:embed migrations/*.sql
var migrations embed.FS

// migrateLock is the advisory lock executors migrate under, so two starting
// at once do not both apply a migration.
const migrateLock = 0x73616e64706974 // "sandpit"

// Migrate brings the database's schema to the newest of migrations/, each
// migration once, in order, in its own transaction, and records it in
// sandpit_schema_migrations.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS sandpit_schema_migrations (
		version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, n := range names {
		version, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(n, "migrations/"), "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migrate: %s: the name must start with its version number", n)
		}
		sql, err := migrations.ReadFile(n)
		if err != nil {
			return err
		}
		err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLock)); err != nil {
				return err
			}
			var done bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM sandpit_schema_migrations WHERE version = $1)`, version).Scan(&done); err != nil || done {
				return err
			}
			if _, err := tx.Exec(ctx, string(sql)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO sandpit_schema_migrations (version) VALUES ($1)`, version)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate %s: %w", n, err)
		}
	}
	return nil
}

// PGStore keeps the tenants of a PostgreSQL database: the migrations'
// tables, read whole at start and again on every change (LISTEN/NOTIFY;
// again after a lost connection too, as a change may have been missed). A
// change that does not compile (a policy that does not parse, a bad limit)
// leaves the last good version in force, as with the file; so does a lost
// database, and Problem says so until it is back.
type PGStore struct {
	pool *pgxpool.Pool
	log  *slog.Logger
	cur  atomic.Pointer[Set]
	m    reloadMetrics

	mu      sync.Mutex
	problem string
	// loads counts load attempts, for tests to wait for one.
	loads atomic.Int64

	stop context.CancelFunc
	done chan struct{}
}

// OpenPostgres connects to the database at dsn (a postgres:// URL or
// key=value string), migrates it, loads the tenants (which must load) and
// follows its changes until Close. reg (nil for none) gets the same
// metrics as the file store's.
func OpenPostgres(ctx context.Context, dsn string, reg prometheus.Registerer, log *slog.Logger) (*PGStore, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("tenants store: %w", err)
	}
	s := &PGStore{pool: pool, log: log, m: newReloadMetrics(), done: make(chan struct{})}
	if err := Migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("tenants store: %w", err)
	}
	set, err := s.load(ctx)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("tenants store: %w", err)
	}
	s.cur.Store(set)
	s.m.ok.Set(1)
	s.m.register(reg)
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	go s.follow(lctx)
	return s, nil
}

// Close stops following changes and closes the connections.
func (s *PGStore) Close() {
	s.stop()
	<-s.done
	s.pool.Close()
}

// Current is the version in force.
func (s *PGStore) Current() *Set { return s.cur.Load() }

// Problem says why the database's tenants are not the ones in force, or is
// empty when they are.
func (s *PGStore) Problem() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.problem
}

// follow listens for changes and reloads on each, reconnecting (and
// reloading) after a lost connection, until ctx ends.
func (s *PGStore) follow(ctx context.Context) {
	defer close(s.done)
	for backoff := 100 * time.Millisecond; ctx.Err() == nil; {
		err := s.listen(ctx)
		if ctx.Err() != nil {
			return
		}
		s.setProblem(fmt.Sprintf("tenants database: %v (the last version read stays in force)", err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// listen holds one connection in LISTEN, reloads once it listens (what
// changed before is read too) and then on every notification; several
// pending at once are one reload.
func (s *PGStore) listen(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	for {
		s.reload(ctx)
		if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
			return err
		}
		for {
			wctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
			_, err := conn.Conn().WaitForNotification(wctx)
			cancel()
			if err != nil {
				break
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

func (s *PGStore) reload(ctx context.Context) {
	defer s.loads.Add(1)
	set, err := s.load(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		if s.setProblem(err.Error()) {
			s.log.Error("tenants changed in the database but do not load; keeping the previous version", "error", err)
		}
		s.m.reloads.WithLabelValues("failed").Inc()
		s.m.ok.Set(0)
		return
	}
	s.cur.Store(set)
	s.setProblem("")
	s.m.reloads.WithLabelValues("ok").Inc()
	s.m.ok.Set(1)
	s.log.Info("tenants reloaded from the database", "tenants", set.Len(), "secrets", len(set.secrets))
}

// setProblem sets the problem and reports whether it is a new one.
func (s *PGStore) setProblem(p string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := s.problem != p
	s.problem = p
	return changed
}

// Secret returns tenant's secret name from the version in force: a row of
// sandpit_secrets. The bytes are the caller's to wrap (secrets.Value), never
// to print.
func (s *PGStore) Secret(tenant, name string) ([]byte, bool) { return s.Current().Secret(tenant, name) }

// load reads every tenant, tier and secret in one snapshot.
func (s *PGStore) load(ctx context.Context) (*Set, error) {
	var docs []tenantDoc
	secrets := map[secretKey][]byte{}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT tenant, mode, policy, max_concurrent, executions_per_minute,
			coalesce(max_timeout, ''), coalesce(max_memory, ''), max_requests FROM sandpit_tenants ORDER BY tenant`)
		if err != nil {
			return err
		}
		index := map[string]int{}
		for rows.Next() {
			var d tenantDoc
			if err := rows.Scan(&d.Tenant, &d.Mode, &d.Policy, &d.Limits.MaxConcurrent, &d.Limits.ExecutionsPerMinute,
				&d.Limits.MaxTimeout, &d.Limits.MaxMemory, &d.Limits.MaxRequests); err != nil {
				return err
			}
			index[d.Tenant] = len(docs)
			docs = append(docs, d)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT tenant, tier, coalesce(policy, ''), max_concurrent, executions_per_minute,
			coalesce(max_timeout, ''), coalesce(max_memory, ''), max_requests FROM sandpit_tiers ORDER BY tenant, tier`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var tenantName string
			var d tierDoc
			if err := rows.Scan(&tenantName, &d.Tier, &d.Policy, &d.Limits.MaxConcurrent, &d.Limits.ExecutionsPerMinute,
				&d.Limits.MaxTimeout, &d.Limits.MaxMemory, &d.Limits.MaxRequests); err != nil {
				return err
			}
			i := index[tenantName] // the foreign key says it is there
			docs[i].Tiers = append(docs[i].Tiers, d)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT tenant, name, value FROM sandpit_secrets`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var k secretKey
			var v []byte
			if err := rows.Scan(&k.tenant, &k.name, &v); err != nil {
				return err
			}
			// The error names the row, never its value.
			if err := CheckSecret(k.name, v); err != nil {
				return fmt.Errorf("sandpit_secrets (%q, %q): %w", k.tenant, k.name, err)
			}
			secrets[k] = v
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("read tenants: %w", err)
	}
	set, err := build(docs, func(field, doc string) (*policy.Compiled, error) {
		p, err := policy.Parse([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		c, err := policy.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	set.secrets = secrets
	return set, nil
}

// MaxSecretBytes bounds one secret's value: API keys and tokens are far
// smaller. The migration's CHECK holds the same bound.
const MaxSecretBytes = 16 << 10

// CheckSecret refuses a secret that is not a secret name, a value that is
// empty or over MaxSecretBytes, and one with a control character (but
// tab): a secret goes into a header, where they would end it or be
// refused, or a query. The error never holds the value.
func CheckSecret(name string, v []byte) error {
	switch {
	case !policy.IsSecretName(name):
		return fmt.Errorf("%q is not a secret name (a-z, 0-9, _.-, at most 64)", name)
	case len(v) == 0:
		return errors.New("empty")
	case len(v) > MaxSecretBytes:
		return fmt.Errorf("%d bytes, at most %d", len(v), MaxSecretBytes)
	}
	for _, c := range v {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return errors.New("holds a control character: a secret goes into a header or a query, where it cannot")
		}
	}
	return nil
}
