// Package relaytest relays TCP connections on loopback for tests of a cut
// network path: paused, a relay forwards nothing and closes nothing, as a
// path whose packets are dropped does.
package relaytest

import (
	"io"
	"net"
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

// Start relays connections to target until the test ends.
func Start(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{Addr: ln.Addr().String()}
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
			u, err := net.Dial("tcp", target)
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
