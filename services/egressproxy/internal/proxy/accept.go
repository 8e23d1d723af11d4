package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// Accept retries: after a failed accept the listener waits acceptRetryMin,
// doubling up to acceptRetryMax while it keeps failing (net/http's
// schedule). A failure is logged at most once per acceptLogEvery.
const (
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
	acceptLogEvery = time.Second
)

// acceptProbe bounds the first accept after a failed one. The kernel
// takes a descriptor before it looks for a connection, so out of
// descriptors an accept fails at once even with none waiting; one that
// waits has found a descriptor free. Without the bound, the last failure
// of a burst would stand, and health stay NOT_SERVING, until the next
// sandbox connected.
const acceptProbe = 50 * time.Millisecond

// errAcceptWaits is acceptNext's answer when a retry found a descriptor free
// and no connection within acceptProbe.
var errAcceptWaits = errors.New("accept waits for a connection")

// acceptNext is ln.Accept; after a failure (retry) it is bounded by
// acceptProbe, on listeners that take deadlines, and returns
// errAcceptWaits when the bound passes.
func acceptNext(ln net.Listener, retry bool) (net.Conn, error) {
	dl, ok := ln.(interface{ SetDeadline(time.Time) error })
	if !retry || !ok || dl.SetDeadline(time.Now().Add(acceptProbe)) != nil {
		return ln.Accept()
	}
	c, err := ln.Accept()
	_ = dl.SetDeadline(time.Time{})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, errAcceptWaits
	}
	return c, err
}

// acceptState is what Serve tells health about accepting.
type acceptState struct {
	mu      sync.Mutex
	failing error // the last accept error while accepts fail, else nil
	lastLog time.Time
	dropped int // failures not logged since lastLog
}

func (p *Proxy) acceptFailed(err error, backoff time.Duration) {
	p.cfg.Metrics.acceptError()
	a := &p.accept
	a.mu.Lock()
	a.failing = err
	logNow := time.Since(a.lastLog) >= acceptLogEvery
	dropped := a.dropped
	if logNow {
		a.lastLog, a.dropped = time.Now(), 0
	} else {
		a.dropped++
	}
	a.mu.Unlock()
	if logNow {
		p.log.Error("accept failed; retrying", "error", err, "retry_in_seconds", backoff.Seconds(), "failures_not_logged", dropped)
	}
}

func (p *Proxy) acceptOK() {
	a := &p.accept
	a.mu.Lock()
	was := a.failing
	a.failing = nil
	a.mu.Unlock()
	if was != nil {
		p.log.Info("accepting again")
	}
}

// ErrNotAccepting wraps the accept error while the listener cannot accept.
var ErrNotAccepting = errors.New("transparent listener cannot accept connections")

// Accepting returns nil while the listener accepts connections, and an
// error wrapping ErrNotAccepting while its accepts fail (out of file
// descriptors, typically). Health reports it.
func (p *Proxy) Accepting() error {
	p.accept.mu.Lock()
	defer p.accept.mu.Unlock()
	if p.accept.failing != nil {
		return fmt.Errorf("%w: %w", ErrNotAccepting, p.accept.failing)
	}
	return nil
}
