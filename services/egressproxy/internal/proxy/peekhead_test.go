package proxy

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

// trickle hands out one byte per Read, as a sandbox sending a head byte by
// byte does.
type trickle struct{ r io.Reader }

func (t trickle) Read(b []byte) (int, error) { return t.r.Read(b[:1]) }

// TestPeekHeadTrickledIsLinear trickles heads of 16 and 64 KiB and checks
// the bytes searched grow linearly: a rescan of the whole head per byte
// would search about size²/2 bytes (2·10⁹ for 64 KiB).
func TestPeekHeadTrickledIsLinear(t *testing.T) {
	tests := []struct {
		name string
		size int
	}{
		{"16KiB", 16 << 10},
		{"64KiB", MaxHeaderBytes - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := "GET / HTTP/1.1\r\nHost: example.com\r\n"
			pad := tt.size - len(line) - len("X-Pad: \r\n\r\n")
			head := line + "X-Pad: " + strings.Repeat("a", pad) + "\r\n\r\n"
			if len(head) != tt.size {
				t.Fatalf("head is %d bytes, want %d", len(head), tt.size)
			}
			br := bufio.NewReaderSize(trickle{strings.NewReader(head)}, MaxHeaderBytes)
			var hs headScan
			gotLine, hdr, err := hs.peek(br)
			if err != nil {
				t.Fatalf("peek: %v", err)
			}
			if gotLine != "GET / HTTP/1.1" || hdr.Get("Host") != "example.com" || len(hdr.Get("X-Pad")) != pad {
				t.Fatalf("peek = %q, %v", gotLine, hdr)
			}
			if br.Buffered() != len(head) {
				t.Fatalf("buffered %d, want the whole head (%d) left unconsumed", br.Buffered(), len(head))
			}
			// Each arrival searches the new byte and the three before it.
			if limit := 4 * len(head); hs.scanned > limit {
				t.Fatalf("searched %d bytes for a %d-byte head, want at most %d", hs.scanned, len(head), limit)
			}
		})
	}
}

// TestPeekHeadTrickledOversized checks a trickled head over the bound is
// still found over it, with its request line.
func TestPeekHeadTrickledOversized(t *testing.T) {
	head := "GET / HTTP/1.1\r\nX-Pad: " + strings.Repeat("a", MaxHeaderBytes)
	br := bufio.NewReaderSize(trickle{strings.NewReader(head)}, MaxHeaderBytes)
	var hs headScan
	line, _, err := hs.peek(br)
	if !errors.Is(err, errHeadTooLarge) || line != "GET / HTTP/1.1" {
		t.Fatalf("peek = %q, %v; want the line and errHeadTooLarge", line, err)
	}
	if hs.scanned > 4*MaxHeaderBytes {
		t.Fatalf("searched %d bytes, want at most %d", hs.scanned, 4*MaxHeaderBytes)
	}
}

// TestPeekHeadEndSplitAcrossArrivals checks an end of head whose four
// bytes arrive separately is found.
func TestPeekHeadEndSplitAcrossArrivals(t *testing.T) {
	br := bufio.NewReaderSize(trickle{strings.NewReader("GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT")}, MaxHeaderBytes)
	line, hdr, err := peekHead(br)
	if err != nil || line != "GET / HTTP/1.1" || hdr.Get("Host") != "a" {
		t.Fatalf("peekHead = %q, %v, %v", line, hdr, err)
	}
}
