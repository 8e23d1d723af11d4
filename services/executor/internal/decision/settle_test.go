package decision

import (
	"testing"
	"time"
)

// TestSettle: an execution that made no request settles at once; one heard
// from waits for quiet, and one with an exchange still open waits for its
// outcome, at most the bound.
func TestSettle(t *testing.T) {
	e := NewExecution("x1", nil, nil)
	t0 := time.Now()
	e.Settle(time.Second, time.Minute)
	if d := time.Since(t0); d > 100*time.Millisecond {
		t.Errorf("an execution that made no request settled in %v", d)
	}

	e.heard.Store(time.Now().UnixNano())
	t0 = time.Now()
	e.Settle(50*time.Millisecond, time.Minute)
	if d := time.Since(t0); d < 50*time.Millisecond {
		t.Errorf("settled %v after the last report, want at least the quiet 50ms", d)
	}

	e.mu.Lock()
	e.use.open = 1
	e.mu.Unlock()
	t0 = time.Now()
	e.Settle(time.Millisecond, 80*time.Millisecond)
	if d := time.Since(t0); d < 80*time.Millisecond {
		t.Errorf("settled after %v with an exchange open, want the bound 80ms", d)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		e.mu.Lock()
		e.use.open = 0
		e.mu.Unlock()
	}()
	t0 = time.Now()
	e.Settle(time.Millisecond, time.Minute)
	if d := time.Since(t0); d < 20*time.Millisecond || d > 10*time.Second {
		t.Errorf("settled after %v; the exchange ended after 20ms", d)
	}
}
