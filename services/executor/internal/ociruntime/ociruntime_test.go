package ociruntime

import (
	"slices"
	"testing"
)

func TestParseBinding(t *testing.T) {
	tests := []struct {
		in      string
		want    Binding
		wantErr bool
	}{
		{in: "sandpit.local/node-sdk:24=runsc", want: Binding{Image: "sandpit.local/node-sdk:24", Runtime: Runsc}},
		{in: " sandpit.local/* = runc ", want: Binding{Image: "sandpit.local/*", Runtime: Runc}},
		{in: "sandpit.local/node:24", wantErr: true},
		{in: "=runsc", wantErr: true},
		{in: "*=runsc", wantErr: true},
		{in: "img=kata", wantErr: true},
		{in: "img=", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseBinding(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseBinding(%q) = %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestChoose(t *testing.T) {
	table := Table{Default: Runc, Bindings: []Binding{
		{Image: "sandpit.local/node-sdk:24", Runtime: Runsc},
		{Image: "sandpit.local/trusted/*", Runtime: Runc},
		{Image: "sandpit.local/*", Runtime: Runsc},
	}}
	tests := []struct {
		image string
		want  Name
	}{
		{"sandpit.local/node-sdk:24", Runsc},
		{"sandpit.local/node-sdk:25", Runsc},
		{"sandpit.local/trusted/node:24", Runc},
		{"sandpit.local/node:24", Runsc},
		{"other.example/node:24", Runc},
		{"", Runc},
	}
	for _, tt := range tests {
		if got := table.Choose(Request{Image: tt.image}); got != tt.want {
			t.Errorf("Choose(%q) = %s, want %s", tt.image, got, tt.want)
		}
	}
	if got := (Table{}).Choose(Request{Image: "x"}); got != Runc {
		t.Errorf("zero table chose %s, want runc", got)
	}
	if got := (Table{Default: Runsc}).Choose(Request{Image: "x"}); got != Runsc {
		t.Errorf("runsc default chose %s, want runsc", got)
	}
}

func TestUsed(t *testing.T) {
	tests := []struct {
		table Table
		want  []Name
	}{
		{Table{}, []Name{Runc}},
		{Table{Default: Runsc}, []Name{Runsc}},
		{Table{Bindings: []Binding{{"a", Runsc}, {"b", Runc}, {"c", Runsc}}}, []Name{Runc, Runsc}},
	}
	for _, tt := range tests {
		if got := tt.table.Used(); !slices.Equal(got, tt.want) {
			t.Errorf("%+v.Used() = %v, want %v", tt.table, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	for _, n := range Names {
		if got, err := Parse(string(n)); err != nil || got != n {
			t.Errorf("Parse(%q) = %q, %v", n, got, err)
		}
	}
	if _, err := Parse("kata"); err == nil {
		t.Error("Parse(kata) succeeded")
	}
}
