package decision

import "sync/atomic"

// DefaultMaxNetworkLogBytes bounds the network logs of all executions
// together, on top of each one's maxLogBytes: with many executions
// running, their logs cannot grow the executor's memory past it.
const DefaultMaxNetworkLogBytes = 256 << 20

// Of an execution's log bounds, this share is kept for allowed
// (forwarded) requests: blocked entries stop where only it is left, so a
// flood of blocked requests cannot push an allowed one out of the log.
const (
	allowedReserveEntries = maxLogEntries / 2
	allowedReserveBytes   = maxLogBytes / 2
)

// LogBudget is the bytes the network logs of all running executions may
// hold together, counted as each entry is counted against maxLogBytes
// (its encoded size plus entryOverhead). Past it, new entries are left
// out of their log and counted as omitted. A nil *LogBudget has no bound.
type LogBudget struct {
	max  int64
	used atomic.Int64
}

// NewLogBudget returns a budget of max bytes; max <= 0 means
// DefaultMaxNetworkLogBytes.
func NewLogBudget(max int64) *LogBudget {
	if max <= 0 {
		max = DefaultMaxNetworkLogBytes
	}
	return &LogBudget{max: max}
}

// Used returns the bytes held now.
func (b *LogBudget) Used() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

func (b *LogBudget) take(n int) bool {
	if b == nil {
		return true
	}
	for {
		u := b.used.Load()
		if u+int64(n) > b.max {
			return false
		}
		if b.used.CompareAndSwap(u, u+int64(n)) {
			return true
		}
	}
}

func (b *LogBudget) give(n int) {
	if b != nil {
		b.used.Add(-int64(n))
	}
}

// UseLogBudget makes e's log entries count against b; call it before the
// execution's first request.
func (e *Execution) UseLogBudget(b *LogBudget) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.budget = b
}

// ReleaseLog gives the bytes e's log holds back to its budget; the
// execution's network has ended, and entries after it are omitted. The
// log itself stays readable (Summary).
func (e *Execution) ReleaseLog() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.released {
		e.released = true
		e.budget.give(e.logBytes)
	}
}

// logRoom reports whether an entry of size bytes fits e's log, and takes
// it from the global budget if so; e.mu is held. A blocked entry does not
// get the share kept for allowed ones.
func (e *Execution) logRoom(size int, blocked bool) bool {
	entries, bytes := maxLogEntries-len(e.log), maxLogBytes-e.logBytes
	if blocked {
		entries -= max(0, allowedReserveEntries-e.allowedEntries)
		bytes -= max(0, allowedReserveBytes-e.allowedBytes)
	}
	return !e.released && entries >= 1 && size <= bytes && e.budget.take(size)
}
