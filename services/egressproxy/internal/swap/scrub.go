package swap

import (
	"bytes"
	"cmp"
	"io"
	"slices"
)

// chunk is how much the scrubber asks of its reader at a time.
const chunk = 32 << 10

// NewScrubber returns a reader of r's bytes with every occurrence of any
// swap's Value replaced by its Placeholder: leftmost match first, the
// longest value on a tie; empty values are ignored. It holds back at most
// the longest value's length less one byte between reads. On EOF it emits
// what it holds; on another error it drops what it holds (a value cut by
// the error must not reach the sandbox in part) and returns the error.
// Each read of r costs one search per value over what it holds and what
// came in.
func NewScrubber(r io.Reader, swaps []Swap) io.Reader {
	swaps = nonEmpty(swaps, func(s Swap) string { return string(s.Value) })
	if len(swaps) == 0 {
		return r
	}
	slices.SortStableFunc(swaps, func(a, b Swap) int { return cmp.Compare(len(b.Value), len(a.Value)) })
	return &scrubber{r: r, swaps: swaps, maxLen: len(swaps[0].Value), buf: make([]byte, chunk)}
}

type scrubber struct {
	r      io.Reader
	swaps  []Swap // longest value first
	maxLen int
	buf    []byte // read buffer
	held   []byte // read, not yet decided: at most maxLen-1 bytes between reads
	out    []byte // decided; out[off:] not yet returned
	off    int
	err    error // the reader's error, returned once out is drained
	next   []int // decide's cache, kept to save allocations
}

func (s *scrubber) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for empty := 0; s.off == len(s.out); {
		s.out, s.off = s.out[:0], 0
		if s.err != nil {
			return 0, s.err
		}
		n, err := s.r.Read(s.buf)
		if n == 0 && err == nil {
			if empty++; empty == 100 { // as bufio.Reader does
				return 0, io.ErrNoProgress
			}
			continue
		}
		s.held = append(s.held, s.buf[:n]...)
		s.decide(err == io.EOF)
		if err != nil {
			s.held = nil // on EOF decide took it all
			s.err = err
		}
	}
	n := copy(p, s.out[s.off:])
	s.off += n
	return n, nil
}

// decide moves what held's bytes have decided to out. A position below
// len(held)-(maxLen-1) has every value's length of bytes after it, so the
// leftmost match there is final; at EOF every position is. next caches
// each value's next occurrence (-1: none left), so a chunk costs one pass
// per value plus a value's length per match.
func (s *scrubber) decide(eof bool) {
	safe := len(s.held)
	if !eof {
		safe -= s.maxLen - 1
	}
	s.next = s.next[:0]
	for range s.swaps {
		s.next = append(s.next, -2) // not searched yet
	}
	i := 0
	for i < safe {
		at, k := -1, 0
		for j, sw := range s.swaps {
			if s.next[j] != -1 && s.next[j] < i {
				s.next[j] = -1
				if x := bytes.Index(s.held[i:], sw.Value); x >= 0 {
					s.next[j] = i + x
				}
			}
			if s.next[j] >= 0 && (at < 0 || s.next[j] < at) { // swaps are longest first: a tie keeps the longest
				at, k = s.next[j], j
			}
		}
		if at < 0 || at >= safe {
			break
		}
		s.out = append(s.out, s.held[i:at]...)
		s.out = append(s.out, s.swaps[k].Placeholder...)
		i = at + len(s.swaps[k].Value)
	}
	if i < safe {
		s.out = append(s.out, s.held[i:safe]...)
		i = safe
	}
	s.held = append(s.held[:0], s.held[i:]...)
}
