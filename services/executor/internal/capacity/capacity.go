// Package capacity bounds how many executions run at once and how many may
// wait for a slot.
package capacity

import (
	"context"
	"errors"
	"sync/atomic"
)

// ErrFull is returned when every slot is taken and the wait queue is full.
var ErrFull = errors.New("capacity: all execution slots and queue places are taken")

// Limiter hands out at most Slots concurrent slots and lets at most Queue
// callers wait for one. The zero value is not usable; call New.
type Limiter struct {
	slots    chan struct{}
	queue    int64
	waiting  atomic.Int64
	inFlight atomic.Int64
}

// New returns a Limiter with the given number of slots and queue places.
func New(slots, queue int) *Limiter {
	return &Limiter{slots: make(chan struct{}, slots), queue: int64(queue)}
}

// Acquire takes a slot, waiting in the queue while there is room in it. It
// returns ErrFull when there is none, or ctx's error when ctx ends first. The
// returned release must be called exactly once.
func (l *Limiter) Acquire(ctx context.Context) (release func(), err error) {
	select {
	case l.slots <- struct{}{}:
		return l.taken(), nil
	default:
	}
	if l.waiting.Add(1) > l.queue {
		l.waiting.Add(-1)
		return nil, ErrFull
	}
	defer l.waiting.Add(-1)
	select {
	case l.slots <- struct{}{}:
		return l.taken(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *Limiter) taken() func() {
	l.inFlight.Add(1)
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			l.inFlight.Add(-1)
			<-l.slots
		}
	}
}

// InFlight is the number of slots taken.
func (l *Limiter) InFlight() int64 { return l.inFlight.Load() }

// Waiting is the number of callers waiting for a slot.
func (l *Limiter) Waiting() int64 { return l.waiting.Load() }
