package swap

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// splitReader returns its bytes in reads of the sizes given, in turn
// (cycling), then err (io.EOF when nil).
type splitReader struct {
	b     []byte
	sizes []int
	i     int
	err   error
}

func (r *splitReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	n := len(r.b)
	if len(r.sizes) > 0 {
		n = min(n, max(r.sizes[r.i%len(r.sizes)], 1))
		r.i++
	}
	n = copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

func TestScrubberSplitAtEveryOffset(t *testing.T) {
	const value, ph = "sk_live_REAL", "sk_test_" + "SPXplaceholder"
	body := "{\"key\":\"" + value + "\",\"again\":\"" + value + value + "\",\"part\":\"sk_live_\"}"
	want := strings.ReplaceAll(body, value, ph)
	swaps := []Swap{{Placeholder: ph, Value: []byte(value)}}
	for k := 0; k <= len(body); k++ {
		r := &splitReader{b: []byte(body), sizes: []int{k, len(body)}}
		got, err := io.ReadAll(NewScrubber(r, swaps))
		if err != nil || string(got) != want {
			t.Fatalf("split at %d: %q, %v; want %q", k, got, err, want)
		}
	}
	got, err := io.ReadAll(NewScrubber(iotest.OneByteReader(strings.NewReader(body)), swaps))
	if err != nil || string(got) != want {
		t.Fatalf("one byte reads: %q, %v; want %q", got, err, want)
	}
	if err := iotest.TestReader(NewScrubber(strings.NewReader(body), swaps), []byte(want)); err != nil {
		t.Fatal(err)
	}
}

func TestScrubberOverlappingValues(t *testing.T) {
	swaps := []Swap{
		{Placeholder: "<ab>", Value: []byte("ab")},
		{Placeholder: "<abc>", Value: []byte("abc")},
		{Placeholder: "<bcd>", Value: []byte("bcd")},
		{Placeholder: "<empty>"},
	}
	tests := []struct{ in, want string }{
		{"abcd", "<abc>d"}, // the longest at the leftmost start
		{"xbcdab", "x<bcd><ab>"},
		{"aabcbcd", "a<abc><bcd>"},
		{"ab", "<ab>"}, // at EOF a shorter one is final
		{"zzz", "zzz"},
	}
	for _, tt := range tests {
		for _, sizes := range [][]int{nil, {1}, {2, 1}, {3}} {
			got, err := io.ReadAll(NewScrubber(&splitReader{b: []byte(tt.in), sizes: sizes}, swaps))
			if err != nil || string(got) != tt.want {
				t.Errorf("%q in reads of %v: %q, %v; want %q", tt.in, sizes, got, err, tt.want)
			}
		}
	}
}

func TestScrubberErrorDropsHeldBytes(t *testing.T) {
	const value = "sk_live_REAL"
	broken := errors.New("connection reset")
	in := "hello, the key is " + value[:7]
	for _, sizes := range [][]int{nil, {1}, {5}} {
		got, err := io.ReadAll(NewScrubber(&splitReader{b: []byte(in), sizes: sizes, err: broken}, []Swap{{Placeholder: "P", Value: []byte(value)}}))
		if !errors.Is(err, broken) {
			t.Fatalf("err = %v, want %v", err, broken)
		}
		// What is out was decided before the error: never a piece of
		// the value, and all the bytes that could not start one.
		if !strings.HasPrefix(in, string(got)) || len(got) < len(in)-(len(value)-1) || strings.Contains(string(got), "sk_") {
			t.Fatalf("reads of %v: got %q of %q", sizes, got, in)
		}
	}
}

func TestScrubberStreams(t *testing.T) {
	const total = 64 << 20
	value := []byte("sk_live_0123456789abcdef")
	ph := []byte("sk_test_SPXaaaaaaaaaaaaa") // as long as the value: out and in line up
	line := append(bytes.Repeat([]byte("x"), 1000), value...)
	src := &countingReader{r: io.LimitReader(&repeatReader{b: line}, total)}
	s := NewScrubber(src, []Swap{{Placeholder: string(ph), Value: value}})
	buf := make([]byte, 4000)
	var out, found int
	var tail []byte // the last bytes out, less one placeholder: what a read may continue
	for {
		n, err := s.Read(buf)
		seen := append(tail, buf[:n]...)
		found += bytes.Count(seen, ph)
		if bytes.Contains(seen, value) {
			t.Fatal("value in the output")
		}
		tail = append([]byte(nil), seen[max(0, len(seen)-(len(ph)-1)):]...)
		out += n
		// Bytes read but not yet returned: one chunk and a window.
		if lag := src.n - out; lag > chunk+len(value) {
			t.Fatalf("after %d bytes out, %d read: %d held", out, src.n, lag)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if out != total || found != total/len(line) { // 64 MiB is whole lines
		t.Fatalf("%d bytes out of %d, %d placeholders", out, total, found)
	}
}

func TestScrubberNoProgress(t *testing.T) {
	s := NewScrubber(iotest.ErrReader(nil), []Swap{{Placeholder: "P", Value: []byte("v")}})
	if n, err := s.Read(make([]byte, 10)); n != 0 || !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("a reader that returns 0, nil forever: %d, %v", n, err)
	}
}

func TestScrubberNoValues(t *testing.T) {
	r := strings.NewReader("x")
	if s := NewScrubber(r, []Swap{{Placeholder: "P"}}); s != io.Reader(r) {
		t.Fatalf("no value to scrub: %T, want the reader itself", s)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// repeatReader reads b over and over.
type repeatReader struct {
	b   []byte
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}
