package ring

import "testing"

func TestTakesInTurnAndNeverTwice(t *testing.T) {
	r := New(3)
	var got []int
	for range 3 {
		i, ok := r.Take()
		if !ok {
			t.Fatal("ring of 3 ran out before 3 takes")
		}
		got = append(got, i)
	}
	if got[0] != 0 || got[1] != 1 || got[2] != 2 {
		t.Fatalf("took %v, want [0 1 2]", got)
	}
	if i, ok := r.Take(); ok {
		t.Fatalf("took %d from a full ring", i)
	}
	r.Free(1)
	r.Free(0)
	// In turn after the last taken (2): 0, wrapping round, then 1.
	if i, _ := r.Take(); i != 0 {
		t.Fatalf("after freeing 1 and 0 took %d, want 0", i)
	}
	if i, _ := r.Take(); i != 1 {
		t.Fatalf("took %d, want 1", i)
	}
}
