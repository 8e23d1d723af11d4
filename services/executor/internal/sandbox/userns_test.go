package sandbox

import "testing"

func TestHostIDsAreDisjointAndBounded(t *testing.T) {
	h, err := NewHostIDs(1<<31, 2)
	if err != nil {
		t.Fatal(err)
	}
	a, freeA, err := h.Take()
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := h.Take()
	if err != nil {
		t.Fatal(err)
	}
	if a != 1<<31 || b != 1<<31+UserNSSize {
		t.Fatalf("ranges start at %d and %d, want %d and %d", a, b, uint32(1<<31), uint32(1<<31+UserNSSize))
	}
	if _, _, err := h.Take(); err != ErrNoHostIDs {
		t.Fatalf("third take of two ranges: %v, want ErrNoHostIDs", err)
	}
	freeA()
	c, _, err := h.Take()
	if err != nil || c != a {
		t.Fatalf("after a free: %d, %v; want %d", c, err, a)
	}
	freeA() // a second call must not free the range c has now
	if _, _, err := h.Take(); err != ErrNoHostIDs {
		t.Fatalf("freeing twice freed twice: %v", err)
	}

	for _, bad := range []struct {
		base  uint32
		count int
	}{
		{0, 1},               // host root's range
		{1<<16 + 1, 1},       // not a multiple
		{1 << 31, 0},         // no ranges
		{1<<32 - 1<<16, 1},   // ends at 2^32, past the largest id
		{1 << 31, 1<<15 + 1}, // the same, by count
	} {
		if _, err := NewHostIDs(bad.base, bad.count); err == nil {
			t.Errorf("NewHostIDs(%d, %d) took it", bad.base, bad.count)
		}
	}
}
