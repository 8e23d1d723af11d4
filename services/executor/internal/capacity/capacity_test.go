package capacity

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestLimiterQueuesThenRefuses(t *testing.T) {
	l := New(1, 1)
	ctx := context.Background()

	release, err := l.Acquire(ctx)
	if err != nil {
		t.Fatalf("first Acquire: %v", err)
	}

	got := make(chan error, 1)
	go func() {
		r, err := l.Acquire(ctx)
		if err == nil {
			r()
		}
		got <- err
	}()
	for l.Waiting() != 1 {
		time.Sleep(time.Millisecond)
	}

	if _, err := l.Acquire(ctx); !errors.Is(err, ErrFull) {
		t.Fatalf("third Acquire with slot and queue taken: got %v, want ErrFull", err)
	}

	release()
	if err := <-got; err != nil {
		t.Fatalf("queued Acquire: %v", err)
	}
	if l.InFlight() != 0 || l.Waiting() != 0 {
		t.Fatalf("after all releases: in flight %d, waiting %d", l.InFlight(), l.Waiting())
	}
}

func TestLimiterWaitEndsWithContext(t *testing.T) {
	l := New(1, 4)
	release, err := l.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer release()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if l.Waiting() != 0 {
		t.Fatalf("waiting = %d after the waiter gave up", l.Waiting())
	}
}

func TestReleaseTwiceFreesOneSlot(t *testing.T) {
	l := New(2, 0)
	r1, _ := l.Acquire(context.Background())
	r2, _ := l.Acquire(context.Background())
	r1()
	r1()
	if l.InFlight() != 1 {
		t.Fatalf("in flight = %d, want 1", l.InFlight())
	}
	r2()
}
