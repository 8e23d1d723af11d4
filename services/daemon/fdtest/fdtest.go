//go:build linux

// Package fdtest runs a test's process out of file descriptors, for tests
// of what a daemon does when a socket or an accept fails with EMFILE.
package fdtest

import (
	"os"
	"syscall"
	"testing"
)

// Limit lowers the process's RLIMIT_NOFILE so that at most free more
// descriptors can be opened: the lowest free ones, which the next socket
// or accept takes. It returns a function that restores the limit, which
// the test's end calls too. Nothing else in the process may need a
// descriptor meanwhile: tests that call it must not run in parallel.
func Limit(t testing.TB, free int) (restore func()) {
	t.Helper()
	var was syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
		t.Fatal(err)
	}
	// The kernel gives the lowest free number: below it all are taken.
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	lowest := f.Fd()
	f.Close()
	restore = func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
			t.Errorf("restore RLIMIT_NOFILE: %v", err)
		}
	}
	t.Cleanup(restore)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: uint64(lowest) + uint64(free), Max: was.Max}); err != nil {
		t.Fatal(err)
	}
	return restore
}
