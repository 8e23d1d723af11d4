package server

import (
	"bytes"
	"errors"
	"sync"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// outputBudget is the byte allowance stdout and stderr share.
type outputBudget struct {
	mu        sync.Mutex
	left      uint64
	truncated bool
	exceeded  func()
}

// take grants up to n bytes; when it grants fewer it marks the output
// truncated and calls exceeded, once.
func (b *outputBudget) take(n int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if uint64(n) <= b.left {
		b.left -= uint64(n)
		return n
	}
	granted := int(b.left)
	b.left = 0
	if !b.truncated {
		b.truncated = true
		b.exceeded()
	}
	return granted
}

func (b *outputBudget) wasTruncated() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.truncated
}

// errStreamDone is returned to an output copy that outlives its execution.
var errStreamDone = errors.New("execution's event stream has ended")

// outputWriter turns one output stream of the program into events. Writes
// block while the event channel is full. Bytes past the budget are
// swallowed, so the copy from the sandbox keeps draining until it is killed.
type outputWriter struct {
	x      *execution
	budget *outputBudget
	stderr bool
	// sent counts the bytes delivered; one goroutine writes, and it is read
	// only after the sandbox's output was drained.
	sent uint64
}

func (w *outputWriter) Write(p []byte) (int, error) {
	n := w.budget.take(len(p))
	if n == 0 {
		return len(p), nil
	}
	// The caller reuses p after Write returns.
	out := &executorv1.Output{Data: bytes.Clone(p[:n])}
	ev := &executorv1.ExecuteResponse{Event: &executorv1.ExecuteResponse_Stdout{Stdout: out}}
	if w.stderr {
		ev = &executorv1.ExecuteResponse{Event: &executorv1.ExecuteResponse_Stderr{Stderr: out}}
	}
	if !w.x.emit(ev) {
		return 0, errStreamDone
	}
	w.sent += uint64(n)
	return len(p), nil
}
