package swap

import (
	"encoding/base64"
	"net/http"
	"reflect"
	"testing"
)

func TestApply(t *testing.T) {
	ph := "sk_test_" + testID('a')
	other := "pk_" + testID('b')
	swaps := []Swap{{Placeholder: ph, Value: []byte("sk_live_REAL&=+ %")}, {Placeholder: other, Value: []byte("pk_REAL")}}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name      string
		h         http.Header
		query     string
		wantH     http.Header
		wantQuery string
	}{
		{
			name:  "header values, each",
			h:     http.Header{"Authorization": {"Bearer " + ph}, "X-Key": {other, "x" + other + ph}},
			wantH: http.Header{"Authorization": {"Bearer sk_live_REAL&=+ %"}, "X-Key": {"pk_REAL", "xpk_REALsk_live_REAL&=+ %"}},
		},
		{
			name:  "basic decoded, replaced, re-encoded",
			h:     http.Header{"Authorization": {"basic " + b64(ph+":")}, "Proxy-Authorization": {"Basic " + b64("u:"+other)}},
			wantH: http.Header{"Authorization": {"basic " + b64("sk_live_REAL&=+ %:")}, "Proxy-Authorization": {"Basic " + b64("u:pk_REAL")}},
		},
		{
			name:  "basic without a placeholder kept",
			h:     http.Header{"Authorization": {"Basic dTpw"}},
			wantH: http.Header{"Authorization": {"Basic dTpw"}},
		},
		{
			name:      "query values re-encoded, other params byte-identical",
			h:         http.Header{},
			query:     "a=%41%2b&key=" + ph + "&b=x+y%20&flag&k2=%6Bz" + other + "&" + ph + "=1",
			wantH:     http.Header{},
			wantQuery: "a=%41%2b&key=sk_live_REAL%26%3D%2B+%25&b=x+y%20&flag&k2=kzpk_REAL&" + ph + "=1",
		},
		{
			name:      "undecodable query value: escaped value in the raw bytes",
			h:         http.Header{},
			query:     "k=%zz" + ph,
			wantH:     http.Header{},
			wantQuery: "k=%zzsk_live_REAL%26%3D%2B+%25",
		},
		{
			name:      "header names never touched",
			h:         http.Header{"X-" + ph: {"1"}},
			query:     "z=1",
			wantH:     http.Header{"X-" + ph: {"1"}},
			wantQuery: "z=1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := Apply(tt.h, tt.query, swaps)
			if err != nil {
				t.Fatal(err)
			}
			if q != tt.wantQuery {
				t.Errorf("query = %q, want %q", q, tt.wantQuery)
			}
			if !reflect.DeepEqual(tt.h, tt.wantH) {
				t.Errorf("header = %q, want %q", tt.h, tt.wantH)
			}
		})
	}
}

func TestApplyRefusesControlBytesInHeaders(t *testing.T) {
	ph := "sk_" + testID('a')
	for _, v := range []string{"a\r\nX-Evil: 1", "a\nb", "a\x00", "a\x7f", "a\x1b"} {
		swaps := []Swap{{Placeholder: ph, Value: []byte(v)}}
		if _, err := Apply(http.Header{"X-Key": {ph}}, "", swaps); err == nil {
			t.Errorf("value %q placed in a header: no error", v)
		}
		// Where the value is encoded it is fine.
		h := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(ph+":"))}, "X-Other": {"1"}}
		if q, err := Apply(h, "k="+ph, swaps); err != nil || q == "k="+ph {
			t.Errorf("value %q in basic and query: %q, %v", v, q, err)
		}
	}
	if _, err := Apply(http.Header{"X-Key": {ph}}, "", []Swap{{Placeholder: ph, Value: []byte("a\tb\x80")}}); err != nil {
		t.Errorf("HTAB and obs-text refused: %v", err)
	}
}

func TestApplyNoSwaps(t *testing.T) {
	h := http.Header{"X-Key": {testID('a')}}
	for _, swaps := range [][]Swap{nil, {{Placeholder: "", Value: []byte("v")}}} {
		if q, err := Apply(h, "k="+testID('a'), swaps); err != nil || q != "k="+testID('a') || h.Get("X-Key") != testID('a') {
			t.Fatalf("Apply(%v) = %q, %v; header %q", swaps, q, err, h)
		}
	}
}

func TestScrubHeader(t *testing.T) {
	h := http.Header{"Echo": {"key=sk_live_REAL;", "pk_REAL sk_live_REALsk_live_REAL"}, "Sk_live_real": {"x"}}
	ScrubHeader(h, []Swap{
		{Placeholder: "P2", Value: []byte("pk_REAL")},
		{Placeholder: "P1", Value: []byte("sk_live_REAL")},
		{Placeholder: "short", Value: []byte("sk_live")}, // a tie at one start: the longest wins
		{Placeholder: "empty", Value: nil},
	})
	want := http.Header{"Echo": {"key=P1;", "P2 P1P1"}, "Sk_live_real": {"x"}}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("ScrubHeader = %q, want %q", h, want)
	}
}
