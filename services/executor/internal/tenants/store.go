package tenants

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Store keeps the last good version of the tenants file and reloads it when
// the file, or a policy file it names, changes. An edit that does not load
// leaves the last good version in force; Problem says why, and the
// sandpit_tenants_ok gauge reads 0, until a good version is back.
type Store struct {
	path string
	log  *slog.Logger
	cur  atomic.Pointer[Set]

	mu      sync.Mutex
	mtimes  map[string]time.Time
	problem string

	m reloadMetrics
}

// Source is where the executor's tenants come from: a file (Store) or a
// database (PGStore).
type Source interface {
	// Current is the version in force.
	Current() *Set
	// Problem says why the source's latest version is not in force, or
	// is empty when it is.
	Problem() string
}

// reloadMetrics are a store's: reloads by result, and whether the version
// in force is the source's latest.
type reloadMetrics struct {
	reloads *prometheus.CounterVec
	ok      prometheus.Gauge
}

func newReloadMetrics() reloadMetrics {
	m := reloadMetrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandpit_tenants_reloads_total",
			Help: "Changes of the tenants (file, a policy file it names, or database), by result: ok, or failed when they did not load and the previous version stayed in force.",
		}, []string{"result"}),
		ok: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sandpit_tenants_ok",
			Help: "1 when the tenants in force are the source's latest, 0 when its last change did not load and an older version is in force.",
		}),
	}
	// Both series exist from the start, so an alert on failed reads 0.
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("failed")
	return m
}

// register registers the metrics on reg; nil registers them nowhere.
func (m reloadMetrics) register(reg prometheus.Registerer) {
	if reg != nil {
		reg.MustRegister(m.reloads, m.ok)
	}
}

// Open loads the tenants file at path, which must load, and registers the
// store's metrics on reg (nil registers none).
func Open(path string, reg prometheus.Registerer, log *slog.Logger) (*Store, error) {
	s := &Store{path: path, log: log, m: newReloadMetrics()}
	set, mtimes, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cur.Store(set)
	s.mtimes = mtimes
	s.m.ok.Set(1)
	s.m.register(reg)
	return s, nil
}

// Current is the version in force.
func (s *Store) Current() *Set { return s.cur.Load() }

// Problem says why the tenants file's last edit is not in force, or is
// empty when it is.
func (s *Store) Problem() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.problem
}

// Run checks for changes every interval until ctx ends.
func (s *Store) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Check()
		}
	}
}

// Check reloads the tenants if any of their files changed since the last
// look (a file gone counts as a change). While the last edit does not
// load, every check tries again, since the fix may be in a policy file
// only the broken version names; a failure is counted and logged once per
// edit (or new error), not once per try.
func (s *Store) Check() {
	s.mu.Lock()
	defer s.mu.Unlock()
	edited := changed(s.mtimes)
	if !edited && s.problem == "" {
		return
	}
	set, mtimes, err := s.load()
	if err != nil {
		if edited {
			s.m.reloads.WithLabelValues("failed").Inc()
		}
		s.mtimes = mtimesOf(keys(s.mtimes))
		if s.problem != err.Error() {
			s.log.Error("tenants file changed but does not load; keeping the previous version", "path", s.path, "error", err)
		}
		s.problem = err.Error()
		s.m.ok.Set(0)
		return
	}
	s.cur.Store(set)
	s.mtimes = mtimes
	s.problem = ""
	s.m.reloads.WithLabelValues("ok").Inc()
	s.m.ok.Set(1)
	s.log.Info("tenants reloaded", "path", s.path, "tenants", set.Len())
}

// load reads the files, noting their mtimes first: a change made while
// they are read is seen at the next check.
func (s *Store) load() (*Set, map[string]time.Time, error) {
	before := mtimesOf([]string{s.path})
	set, err := Load(s.path)
	if err != nil {
		return nil, nil, err
	}
	m := mtimesOf(set.Files)
	m[s.path] = before[s.path]
	return set, m, nil
}

func mtimesOf(paths []string) map[string]time.Time {
	m := make(map[string]time.Time, len(paths))
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil {
			m[p] = st.ModTime()
		} else {
			m[p] = time.Time{}
		}
	}
	return m
}

func changed(mtimes map[string]time.Time) bool {
	for p, t := range mtimesOf(keys(mtimes)) {
		if !t.Equal(mtimes[p]) {
			return true
		}
	}
	return false
}

func keys(m map[string]time.Time) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
