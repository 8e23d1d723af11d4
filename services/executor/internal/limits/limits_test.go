package limits

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

func TestResolve(t *testing.T) {
	tests := []struct {
		name   string
		req    *executorv1.Limits
		want   func(*Set)
		fields []string
	}{
		{name: "nil takes defaults", req: nil, want: func(*Set) {}},
		{name: "zero fields take defaults", req: &executorv1.Limits{}, want: func(*Set) {}},
		{name: "lower within range", req: &executorv1.Limits{MemoryBytes: 128 * MiB, Pids: 64, Timeout: durationpb.New(time.Second)},
			want: func(s *Set) { s.MemoryBytes, s.Pids, s.Timeout = 128*MiB, 64, time.Second }},
		{name: "raise to the maximum", req: &executorv1.Limits{MemoryBytes: Maxima.MemoryBytes, OutputBytes: Maxima.OutputBytes},
			want: func(s *Set) { s.MemoryBytes, s.OutputBytes = Maxima.MemoryBytes, Maxima.OutputBytes }},
		{name: "above maxima", req: &executorv1.Limits{MemoryBytes: Maxima.MemoryBytes + 1, CpuMillicores: Maxima.CPUMillicores + 1, Timeout: durationpb.New(Maxima.Timeout + 1)},
			fields: []string{"limits.timeout", "limits.memory_bytes", "limits.cpu_millicores"}},
		{name: "below floors", req: &executorv1.Limits{Pids: 1, OpenFiles: 3, TmpBytes: 1, CodeBytes: 1, OutputBytes: 1},
			fields: []string{"limits.pids", "limits.output_bytes", "limits.code_bytes", "limits.tmp_bytes", "limits.open_files"}},
		{name: "negative timeout", req: &executorv1.Limits{Timeout: durationpb.New(-time.Second)}, fields: []string{"limits.timeout"}},
		{name: "invalid duration", req: &executorv1.Limits{Timeout: &durationpb.Duration{Seconds: 1, Nanos: -5}}, fields: []string{"limits.timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, vs := Resolve(tt.req, Defaults, Maxima)
			var fields []string
			for _, v := range vs {
				fields = append(fields, v.Field)
				if v.Reason == "" {
					t.Errorf("%s: empty reason", v.Field)
				}
			}
			if strings.Join(fields, ",") != strings.Join(tt.fields, ",") {
				t.Fatalf("violations %v, want %v", fields, tt.fields)
			}
			if tt.want != nil {
				want := Defaults
				tt.want(&want)
				if got != want {
					t.Errorf("got %+v\nwant %+v", got, want)
				}
			}
		})
	}
}

func TestCheckConfig(t *testing.T) {
	if err := CheckConfig(Defaults, Maxima); err != nil {
		t.Fatalf("built-in defaults and maxima: %v", err)
	}
	d := Defaults
	d.MemoryBytes = Maxima.MemoryBytes + 1
	if err := CheckConfig(d, Maxima); err == nil || !strings.Contains(err.Error(), "memory_bytes") {
		t.Errorf("default above maximum: %v", err)
	}
	d = Defaults
	d.Pids = 2
	if err := CheckConfig(d, Maxima); err == nil || !strings.Contains(err.Error(), "pids") {
		t.Errorf("default below floor: %v", err)
	}
}

func TestProtoRoundTrip(t *testing.T) {
	got, vs := Resolve(Defaults.Proto(), Floor, Maxima)
	if len(vs) != 0 || got != Defaults {
		t.Errorf("Resolve(Defaults.Proto()) = %+v, %v", got, vs)
	}
}

func TestClampOpenFiles(t *testing.T) {
	tests := []struct {
		hard             uint64
		wantDef, wantMax uint32
		changed          bool
	}{
		{hard: 1 << 20, wantDef: Defaults.OpenFiles, wantMax: Maxima.OpenFiles},
		{hard: 20000, wantDef: Defaults.OpenFiles, wantMax: 20000, changed: true},
		{hard: 512, wantDef: 512, wantMax: 512, changed: true},
		{hard: 8, wantDef: Defaults.OpenFiles, wantMax: Maxima.OpenFiles}, // below the floor: left alone, CheckConfig holds
	}
	for _, tt := range tests {
		def, max := Defaults, Maxima
		if got := ClampOpenFiles(&def, &max, tt.hard); got != tt.changed || def.OpenFiles != tt.wantDef || max.OpenFiles != tt.wantMax {
			t.Errorf("hard %d: changed %v, default %d, max %d; want %v, %d, %d", tt.hard, got, def.OpenFiles, max.OpenFiles, tt.changed, tt.wantDef, tt.wantMax)
		}
		if err := CheckConfig(def, max); err != nil {
			t.Errorf("hard %d: %v", tt.hard, err)
		}
	}
}
