// Package relaytest relays TCP connections on loopback, or unix socket
// connections, for tests of a cut network path: paused, a relay forwards
// nothing and closes nothing, as a path whose packets are dropped does.
package relaytest

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Relay forwards TCP connections to a target until paused; paused, it
// stops forwarding bytes either way without closing anything, like a
// network path whose packets are dropped.
type Relay struct {
	// Addr is where it listens.
	Addr string

	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
}

// Start relays connections to target until the test ends. A target of
// unix:///path is a unix socket, and the relay then listens on one of its
// own (Addr is unix:///its-path); any other is a TCP address, and the relay
// listens on loopback.
func Start(t testing.TB, target string) *Relay {
	t.Helper()
	network, listenAt := "tcp", "127.0.0.1:0"
	if path, ok := strings.CutPrefix(target, "unix://"); ok {
		// A short directory of its own: socket paths have at most 107
		// bytes, and t.TempDir's grow with the test's name.
		dir, err := os.MkdirTemp("", "relay")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		network, listenAt, target = "unix", filepath.Join(dir, "relay.sock"), path
	}
	ln, err := net.Listen(network, listenAt)
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{Addr: ln.Addr().String()}
	if network == "unix" {
		r.Addr = "unix://" + r.Addr
	}
	r.cond = sync.NewCond(&r.mu)
	var wg sync.WaitGroup
	var conns []net.Conn
	var cmu sync.Mutex
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial(network, target)
			if err != nil {
				c.Close()
				continue
			}
			cmu.Lock()
			conns = append(conns, c, u)
			cmu.Unlock()
			wg.Go(func() { r.pipe(u, c) })
			wg.Go(func() { r.pipe(c, u) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		r.Resume()
		cmu.Lock()
		for _, c := range conns {
			c.Close()
		}
		cmu.Unlock()
		wg.Wait()
	})
	return r
}

// Pause stops forwarding; Resume forwards again, what was held first.
func (r *Relay) Pause() { r.set(true) }

// Resume forwards again.
func (r *Relay) Resume() { r.set(false) }

func (r *Relay) set(p bool) {
	r.mu.Lock()
	r.paused = p
	r.mu.Unlock()
	r.cond.Broadcast()
}

func (r *Relay) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		r.mu.Lock()
		for r.paused {
			r.cond.Wait()
		}
		r.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				src.Close()
			}
			return
		}
	}
}
