// Package ring hands out the indexes 0..n-1 in turn, so the index freed
// last is the last to be handed out again: a sandbox's subnet or host id
// range is not reused by the very next sandbox.
package ring

import "sync"

// Ring is a set of n indexes, safe for concurrent use.
type Ring struct {
	mu   sync.Mutex
	n    int
	used map[int]bool
	next int
}

// New returns a ring of n indexes, all free.
func New(n int) *Ring { return &Ring{n: n, used: map[int]bool{}} }

// Take returns the first free index after the last one taken, or false
// when all n are in use.
func (r *Ring) Take() (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := 0; k < r.n; k++ {
		i := (r.next + k) % r.n
		if !r.used[i] {
			r.used[i] = true
			r.next = i + 1
			return i, true
		}
	}
	return 0, false
}

// Free makes i free again.
func (r *Ring) Free(i int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.used, i)
}
