package swap

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
)

// fuzzPlaceholder is the placeholder FuzzFindApply splices in; fuzzValue
// its value, with a byte ('-') the placeholder lacks, so a value in the
// output is one Apply put there.
const (
	fuzzPlaceholder = "sk_test_SPX0aZ9bY8cX7dW6eV5fU4gT3hS2rQ1p"
	fuzzValue       = "sk-live-REAL-value"
)

func FuzzFindApply(f *testing.F) {
	f.Add("X-Api-Key", "Bearer ", "limit=3&key=", "/v1/charges", uint8(0b11111), uint16(7))
	f.Add("Authorization", "user", "a=%41&b", "/%53PX", uint8(0b10001), uint16(0))
	f.Add("x-k", "\r\x00\xff", "k%zz=%zz&=", "", uint8(0b00101), uint16(1000))
	f.Fuzz(func(t *testing.T, name, hval, query, path string, places uint8, pos uint16) {
		splice := func(s string) string {
			at := int(pos) % (len(s) + 1)
			return s[:at] + fuzzPlaceholder + s[at:]
		}
		if places&1 != 0 {
			hval = splice(hval)
		}
		if places&2 != 0 {
			name = splice(name)
		}
		if places&4 != 0 {
			query = splice(query)
		}
		if places&8 != 0 {
			path = splice(path)
		}
		h := http.Header{name: {hval}}
		if places&16 != 0 {
			h["Authorization"] = append(h["Authorization"], "Basic "+base64.StdEncoding.EncodeToString([]byte(splice(hval)+":x")))
		}
		id := fuzzPlaceholder[len("sk_test_"):]
		if len(id) != IDLen {
			t.Fatalf("the placeholder's id %q is not %d bytes", id, IDLen)
		}
		found, err := Find(h, path, query)
		if errors.Is(err, ErrTooMany) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		has := func(place egressv1.PlaceholderPlace, name string) bool {
			return slices.ContainsFunc(found, func(fd Found) bool { return fd.ID == id && fd.Place == place && fd.Name == name })
		}
		hasAny := func(place egressv1.PlaceholderPlace, name string) bool {
			return slices.ContainsFunc(found, func(fd Found) bool { return fd.Place == place && fd.Name == name })
		}

		// Find reports the id wherever it is verbatim.
		for k, vs := range h {
			canon := cut(http.CanonicalHeaderKey(k), maxHeaderName)
			if strings.Contains(k, id) && !has(placePath, "") {
				t.Fatalf("id in header name %q not found as path: %+v", k, found)
			}
			for _, v := range vs {
				if strings.Contains(v, id) && !has(placeHeader, canon) {
					t.Fatalf("id in %s: %q not found: %+v", canon, v, found)
				}
				if creds, ok := basicCredentials(v); ok && isAuthorization(http.CanonicalHeaderKey(k)) && strings.Contains(creds, id) && !has(placeBasic, "") {
					t.Fatalf("id in basic %q not found: %+v", creds, found)
				}
			}
		}
		for param := range strings.SplitSeq(query, "&") {
			k, v, _ := strings.Cut(param, "=")
			if strings.Contains(queryUnescape(k), id) && !has(placePath, "") {
				t.Fatalf("id in query key %q not found as path: %+v", k, found)
			}
			if strings.Contains(queryUnescape(v), id) && !has(placeQuery, cut(queryUnescape(k), maxQueryKey)) {
				t.Fatalf("id in query value %q=%q not found: %+v", k, v, found)
			}
		}
		if strings.Contains(path, id) && !has(placePath, "") {
			t.Fatalf("id in path %q not found: %+v", path, found)
		}

		// With no swap nothing changes.
		same := h.Clone()
		if q, err := Apply(same, query, nil); err != nil || q != query || !equalHeader(same, h) {
			t.Fatalf("Apply without swaps: %q, %v, %q", q, err, same)
		}

		// The value lands only where Find reported a placeholder.
		out := h.Clone()
		q, err := Apply(out, query, []Swap{{Placeholder: fuzzPlaceholder, Value: []byte(fuzzValue)}})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(slices.Sorted(maps.Keys(out)), slices.Sorted(maps.Keys(h))) {
			t.Fatalf("header names changed: %q to %q", h, out)
		}
		for k, vs := range out {
			canon := http.CanonicalHeaderKey(k)
			for i, v := range vs {
				if v == h[k][i] {
					continue
				}
				if !hasAny(placeHeader, cut(canon, maxHeaderName)) && !(isAuthorization(canon) && hasAny(placeBasic, "")) {
					t.Fatalf("header %s changed to %q, nothing found there: %+v", k, v, found)
				}
				if _, ok := basicCredentials(h[k][i]); !(ok && isAuthorization(canon)) && strings.Contains(v, fuzzPlaceholder) {
					t.Fatalf("header %s: %q still holds the placeholder", k, v)
				}
			}
		}
		in, got := strings.Split(query, "&"), strings.Split(q, "&")
		if len(in) != len(got) {
			t.Fatalf("query %q became %q: parameters added or lost", query, q)
		}
		for i := range in {
			if in[i] == got[i] {
				continue
			}
			k, _, _ := strings.Cut(in[i], "=")
			gk, _, _ := strings.Cut(got[i], "=")
			if k != gk || !hasAny(placeQuery, cut(queryUnescape(k), maxQueryKey)) {
				t.Fatalf("query parameter %q became %q, nothing found there: %+v", in[i], got[i], found)
			}
		}
	})
}

func FuzzScrub(f *testing.F) {
	f.Add([]byte(`{"key":"sk_live_x","n":1}`), []byte("sk_live_x"), []byte{0, 9, 200}, []byte{1, 7, 3})
	f.Add([]byte("aaaa"), []byte("aa"), []byte{1, 2}, []byte{0})
	f.Add([]byte(""), []byte("x"), []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, body, value, offsets, sizes []byte) {
		if len(value) == 0 || len(value) > 64 || len(offsets) > 16 {
			return
		}
		// A placeholder of a byte the value lacks: the value in the output
		// can only be one the scrubber missed.
		var ph []byte
		for b := range 256 {
			if bytes.IndexByte(value, byte(b)) < 0 {
				ph = bytes.Repeat([]byte{byte(b)}, 3)
				break
			}
		}
		for _, o := range offsets {
			at := int(o) % (len(body) + 1)
			body = slices.Concat(body[:at:at], value, body[at:])
		}
		ints := make([]int, len(sizes))
		for i, s := range sizes {
			ints[i] = int(s)
		}
		swaps := []Swap{{Placeholder: string(ph), Value: value}}
		want := bytes.ReplaceAll(body, value, ph)
		got, err := io.ReadAll(NewScrubber(&splitReader{b: body, sizes: ints}, swaps))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("scrubbed %q (reads of %v) to %q, %v; want %q", body, sizes, got, err, want)
		}
		if bytes.Contains(got, value) {
			t.Fatalf("value %q in %q", value, got)
		}
		// Cut by an error: a prefix of the whole, no piece of a value.
		broken := errors.New("broken")
		got, err = io.ReadAll(NewScrubber(&splitReader{b: body, sizes: ints, err: broken}, swaps))
		if !errors.Is(err, broken) || !bytes.HasPrefix(want, got) {
			t.Fatalf("cut %q: %q, %v; want a prefix of %q", body, got, err, want)
		}
	})
}

func equalHeader(a, b http.Header) bool {
	return maps.EqualFunc(a, b, func(x, y []string) bool { return slices.Equal(x, y) })
}
