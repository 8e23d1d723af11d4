package swap

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// testID returns an id whose random part is 29 copies of c.
func testID(c byte) string { return Marker + strings.Repeat(string(c), IDLen-len(Marker)) }

func TestFind(t *testing.T) {
	a, b := testID('a'), testID('b')
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	long := strings.Repeat("x", MaxValue+10)
	tests := []struct {
		name  string
		h     http.Header
		path  string
		query string
		want  []Found
	}{
		{name: "nothing", h: http.Header{"Accept": {"*/*"}}, path: "/v1/x", query: "a=1"},
		{
			name: "header",
			h:    http.Header{"Authorization": {"Bearer sk_test_" + a}},
			want: []Found{{ID: a, Place: placeHeader, Name: "Authorization", Value: "Bearer sk_test_" + a}},
		},
		{
			name: "header name made canonical, each value",
			h:    http.Header{"x-api-key": {a, "k" + b}},
			want: []Found{
				{ID: a, Place: placeHeader, Name: "X-Api-Key", Value: a},
				{ID: b, Place: placeHeader, Name: "X-Api-Key", Value: "k" + b},
			},
		},
		{
			name: "basic decoded, besides the raw value",
			h:    http.Header{"Authorization": {"Basic " + b64("sk_"+a+":")}},
			want: []Found{{ID: a, Place: placeBasic, Value: "sk_" + a + ":"}},
		},
		{
			name: "basic scheme case-insensitive, proxy-authorization",
			h:    http.Header{"Proxy-Authorization": {"bASIC " + b64("u:"+a)}},
			want: []Found{{ID: a, Place: placeBasic, Value: "u:" + a}},
		},
		{
			name: "basic in another header is just a header",
			h:    http.Header{"X-Auth": {"Basic " + b64("u:"+a)}},
		},
		{
			name: "bad base64 is just a header",
			h:    http.Header{"Authorization": {"Basic " + a + "!"}},
			want: []Found{{ID: a, Place: placeHeader, Name: "Authorization", Value: "Basic " + a + "!"}},
		},
		{
			name:  "query value, key and value decoded",
			query: "x=1&api%5Fkey=sk%5F" + a + "%20z&y",
			want:  []Found{{ID: a, Place: placeQuery, Name: "api_key", Value: "sk_" + a + " z"}},
		},
		{
			name:  "query value only encoded",
			query: "k=%53PX" + strings.Repeat("c", 29),
			want:  []Found{{ID: testID('c'), Place: placeQuery, Name: "k", Value: testID('c')}},
		},
		{
			name:  "undecodable query value scanned raw",
			query: "k%zz=" + a + "%zz",
			want:  []Found{{ID: a, Place: placeQuery, Name: "k%zz", Value: a + "%zz"}},
		},
		{
			name:  "query key is path",
			query: a + "=1&z" + b,
			want:  []Found{{ID: a, Place: placePath}, {ID: b, Place: placePath}},
		},
		{
			name: "header name is path",
			h:    http.Header{"X-" + a: {"1"}},
			want: []Found{{ID: a, Place: placePath}},
		},
		{
			name: "path raw and decoded",
			path: "/v1/" + a + "/%53PX" + strings.Repeat("d", 29),
			want: []Found{{ID: a, Place: placePath}, {ID: testID('d'), Place: placePath}},
		},
		{
			name: "overlapping and adjacent ids",
			h:    http.Header{"X-K": {"SPX" + a + b}},
			want: []Found{
				{ID: "SPX" + a[:IDLen-3], Place: placeHeader, Name: "X-K", Value: "SPX" + a + b},
				{ID: a, Place: placeHeader, Name: "X-K", Value: "SPX" + a + b},
				{ID: b, Place: placeHeader, Name: "X-K", Value: "SPX" + a + b},
			},
		},
		{
			name: "deduplicated by id, place, name and value",
			h:    http.Header{"X-K": {a, a, a + " more"}, "X-L": {a}},
			path: "/" + a + "/" + a,
			want: []Found{
				{ID: a, Place: placeHeader, Name: "X-K", Value: a},
				{ID: a, Place: placeHeader, Name: "X-K", Value: a + " more"},
				{ID: a, Place: placeHeader, Name: "X-L", Value: a},
				{ID: a, Place: placePath},
			},
		},
		{
			name: "28 characters is no id",
			h:    http.Header{"X-K": {a[:IDLen-1], a[:IDLen-1] + "-", "spx" + a[3:]}},
		},
		{
			name: "value cut",
			h:    http.Header{"X-K": {a + long}},
			want: []Found{{ID: a, Place: placeHeader, Name: "X-K", Value: (a + long)[:MaxValue]}},
		},
		{
			name:  "query key cut to 64, invalid UTF-8 made valid",
			query: strings.Repeat("k", 70) + "=" + a + "&q=%ff" + b,
			want: []Found{
				{ID: a, Place: placeQuery, Name: strings.Repeat("k", 64), Value: a},
				{ID: b, Place: placeQuery, Name: "q", Value: "\uFFFD" + b},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Find(tt.h, tt.path, tt.query)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Find =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestFindTooMany(t *testing.T) {
	h := http.Header{}
	for i := range MaxFound {
		h.Set(fmt.Sprintf("X-K%d", i), testID('a'))
	}
	if got, err := Find(h, "/", ""); err != nil || len(got) != MaxFound {
		t.Fatalf("%d found: %d, %v", MaxFound, len(got), err)
	}
	if _, err := Find(h, "/"+testID('a'), ""); !errors.Is(err, ErrTooMany) {
		t.Fatalf("%d found: err %v, want ErrTooMany", MaxFound+1, err)
	}
}

// TestFindLinear checks Find's time is linear in its input, on the worst
// case: an id at every fourth byte (all the same id, so never ErrTooMany)
// in one long run of letters.
func TestFindLinear(t *testing.T) {
	run := func(n int) int64 {
		h := http.Header{"X-K": {strings.Repeat("SPXa", n/4)}}
		return testing.Benchmark(func(b *testing.B) {
			for b.Loop() {
				if got, err := Find(h, "/", ""); err != nil || len(got) != 1 {
					b.Fatal(len(got), err)
				}
			}
		}).NsPerOp()
	}
	small, big := run(1<<14), run(1<<18)
	// 16x the input: linear is 16x the time, quadratic 256x; 48x leaves
	// room for a loaded machine.
	if big > 48*small {
		t.Fatalf("Find: %d ns for 16 KiB, %d ns for 256 KiB", small, big)
	}
	t.Logf("Find: %d ns for 16 KiB, %d ns for 256 KiB", small, big)
}
