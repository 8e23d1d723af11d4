package app

import (
	"strings"
	"testing"
)

func TestLookupUID(t *testing.T) {
	tests := []struct {
		in      string
		want    uint32
		wantErr string
	}{
		{in: "root", want: 0},
		{in: "0", want: 0},
		{in: "4242", want: 4242},
		{in: "no-such-user-sandpit", wantErr: `proxy-user "no-such-user-sandpit"`},
		{in: "99999999999", wantErr: `proxy-user "99999999999"`},
	}
	for _, tt := range tests {
		got, err := lookupUID(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("lookupUID(%q) = %d, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("lookupUID(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}
