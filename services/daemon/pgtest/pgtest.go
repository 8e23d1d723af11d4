// Package pgtest runs a PostgreSQL server of a test's own: Debian's package
// (make test installs it), a fresh data directory, listening only on a unix
// socket in that directory. As root the server runs as nobody (PostgreSQL
// refuses to run as root). Under CI a missing server fails the test;
// elsewhere it skips.
package pgtest

import (
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
)

// Server is a running PostgreSQL server.
type Server struct {
	// DSN connects to its postgres database as the superuser sandpit.
	DSN string
	// Dir holds its data directory, socket and log.
	Dir string
	bin string
}

// Start starts a server for the test; it is stopped when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("no PostgreSQL server in /usr/lib/postgresql (make test installs Debian's postgresql)")
		}
		t.Skip("no PostgreSQL server (apt-get install postgresql)")
	}
	sort.Strings(bins)
	s := &Server{bin: filepath.Dir(bins[len(bins)-1])}
	dir, err := os.MkdirTemp("", "sandpit-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s.Dir = dir
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
		cmd := exec.Command(filepath.Join(s.bin, name), args...)
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
	s.DSN = fmt.Sprintf("host=%s port=5432 user=sandpit dbname=postgres sslmode=disable", dir)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err := exec.Command(filepath.Join(s.bin, "pg_isready"), "-q", "-h", dir, "-p", "5432", "-U", "sandpit").Run()
		if err == nil {
			return s
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

// URL is DSN as a postgres:// URL.
func (s *Server) URL() string {
	return "postgres://sandpit@/postgres?host=" + s.Dir + "&port=5432&sslmode=disable"
}

// Exec runs sql with psql against the server, stopping at the first error.
func (s *Server) Exec(t testing.TB, sql string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(s.bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", s.Dir, "-p", "5432", "-U", "sandpit", "-d", "postgres", "-c", sql)
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/bin:/bin"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
}
