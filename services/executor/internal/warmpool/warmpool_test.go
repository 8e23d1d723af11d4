package warmpool

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSandbox is a pooled sandbox that says whether it was discarded.
type fakeSandbox struct {
	id        int
	born      time.Time
	dead      atomic.Bool
	discarded atomic.Int32
}

func (f *fakeSandbox) Alive() bool     { return !f.dead.Load() }
func (f *fakeSandbox) Born() time.Time { return f.born }
func (f *fakeSandbox) Discard()        { f.discarded.Add(1) }

// booter boots fakeSandboxes, failing while fail is set, and keeps them.
type booter struct {
	mu   sync.Mutex
	all  []*fakeSandbox
	fail atomic.Bool
}

func (b *booter) boot(context.Context) (Sandbox, error) {
	if b.fail.Load() {
		return nil, errors.New("no boot today")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	sb := &fakeSandbox{id: len(b.all), born: time.Now()}
	b.all = append(b.all, sb)
	return sb, nil
}

func (b *booter) booted() []*fakeSandbox {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*fakeSandbox(nil), b.all...)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func start(t *testing.T, cfg Config) (*Pool, func()) {
	p := New(cfg, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		p.Run(ctx)
		close(done)
	}()
	return p, func() {
		cancel()
		<-done
	}
}

// TestPoolGivesEachSandboxOnce: the pool fills to its size, hands out the
// oldest first, never the same sandbox twice, refills after each take and
// is empty (nil) when a take outruns the boots.
func TestPoolGivesEachSandboxOnce(t *testing.T) {
	b := &booter{}
	p, stop := start(t, Config{Size: 2, MaxAge: time.Hour, Boot: b.boot})
	defer stop()
	eventually(t, "the pool filled", func() bool { return p.Ready() == 2 })
	seen := map[int]bool{}
	for range 6 {
		eventually(t, "a ready sandbox", func() bool { return p.Ready() > 0 })
		sb := p.Take().(*fakeSandbox)
		if seen[sb.id] {
			t.Fatalf("sandbox %d handed out twice", sb.id)
		}
		seen[sb.id] = true
	}
	if first := b.booted()[0]; !seen[first.id] {
		t.Error("the oldest sandbox was never handed out")
	}
	eventually(t, "refilled after the takes", func() bool { return p.Ready() == 2 })
	if n := len(b.booted()); n != 8 {
		t.Errorf("%d boots for 6 takes and a pool of 2, want 8", n)
	}
	for p.Ready() > 0 {
		p.Take()
	}
	b.fail.Store(true)
	if sb := p.Take(); sb != nil {
		t.Errorf("an empty pool handed out %v", sb)
	}
}

// TestPoolRecycles: a sandbox whose node ended or that is past its age is
// discarded, never handed out, and replaced; a boot that fails is retried.
func TestPoolRecycles(t *testing.T) {
	b := &booter{}
	p, stop := start(t, Config{Size: 1, MaxAge: time.Hour, Boot: b.boot, Retry: 10 * time.Millisecond})
	defer stop()
	eventually(t, "the pool filled", func() bool { return p.Ready() == 1 })
	dead := b.booted()[0]
	dead.dead.Store(true)
	// The tick (each second) finds it, or the take does.
	if sb := p.Take(); sb == dead {
		t.Fatal("a sandbox whose node ended was handed out")
	}
	eventually(t, "the dead sandbox discarded", func() bool { return dead.discarded.Load() == 1 })
	eventually(t, "a replacement", func() bool { return p.Ready() == 1 })

	b.fail.Store(true)
	p.Take()
	time.Sleep(50 * time.Millisecond)
	if p.Ready() != 0 {
		t.Fatal("a failing boot filled the pool")
	}
	b.fail.Store(false)
	eventually(t, "a boot retried after failures", func() bool { return p.Ready() == 1 })

	old := New(Config{Size: 1, MaxAge: time.Millisecond, Boot: b.boot}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	sb, _ := b.boot(context.Background())
	old.ready = append(old.ready, sb)
	time.Sleep(5 * time.Millisecond)
	if got := old.Take(); got != nil {
		t.Error("a sandbox past its age was handed out")
	}
	if sb.(*fakeSandbox).discarded.Load() != 1 {
		t.Error("a sandbox past its age was not discarded")
	}
}

// TestPoolDrains: when Run ends, every ready sandbox is discarded once.
func TestPoolDrains(t *testing.T) {
	b := &booter{}
	p, stop := start(t, Config{Size: 3, MaxAge: time.Hour, Boot: b.boot})
	eventually(t, "the pool filled", func() bool { return p.Ready() == 3 })
	taken := p.Take().(*fakeSandbox)
	eventually(t, "refilled", func() bool { return p.Ready() == 3 })
	stop()
	if p.Ready() != 0 {
		t.Errorf("%d ready after the pool stopped", p.Ready())
	}
	for _, sb := range b.booted() {
		want := int32(1)
		if sb == taken {
			want = 0 // its execution's, not the pool's
		}
		if got := sb.discarded.Load(); got != want {
			t.Errorf("sandbox %d discarded %d times, want %d", sb.id, got, want)
		}
	}
}
