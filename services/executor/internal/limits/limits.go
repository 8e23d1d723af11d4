// Package limits resolves the resource limits of one execution from the
// request, the executor's defaults and its maxima.
package limits

import (
	"fmt"
	"time"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Set is one complete set of limits; every field is set.
type Set struct {
	Timeout       time.Duration
	MemoryBytes   uint64
	CPUMillicores uint32
	Pids          uint32
	OutputBytes   uint64
	CodeBytes     uint64
	TmpBytes      uint64
	OpenFiles     uint32
}

// MiB is a mebibyte.
const MiB = 1 << 20

// Floor holds the smallest values that still let node start and do
// ordinary work; below them a request is refused rather than left to fail in
// confusing ways (node needs about ten threads and some 40 MiB to boot).
var Floor = Set{
	Timeout:       100 * time.Millisecond,
	MemoryBytes:   64 * MiB,
	CPUMillicores: 50,
	Pids:          32,
	OutputBytes:   1024,
	CodeBytes:     1024,
	TmpBytes:      64 * 1024,
	OpenFiles:     64,
}

// Defaults are the executor's defaults when the operator sets none.
var Defaults = Set{
	Timeout:       10 * time.Second,
	MemoryBytes:   256 * MiB,
	CPUMillicores: 1000,
	Pids:          128,
	OutputBytes:   1 * MiB,
	CodeBytes:     1 * MiB,
	TmpBytes:      16 * MiB,
	OpenFiles:     1024,
}

// Maxima are the executor's maxima when the operator sets none.
var Maxima = Set{
	Timeout:       5 * time.Minute,
	MemoryBytes:   2048 * MiB,
	CPUMillicores: 2000,
	Pids:          1024,
	OutputBytes:   64 * MiB,
	CodeBytes:     16 * MiB,
	TmpBytes:      512 * MiB,
	OpenFiles:     65536,
}

// Violation names a field of the request and why its value is refused.
type Violation struct {
	Field  string
	Reason string
}

// field is one limit, seen through uniform accessors so that the checks are
// written once for all of them.
type field struct {
	name string
	get  func(Set) uint64
	set  func(*Set, uint64)
	req  func(*executorv1.Limits) (uint64, bool) // value, and whether it is invalid on its own
	unit func(uint64) string
}

func bytesUnit(v uint64) string { return fmt.Sprintf("%d bytes", v) }
func plainUnit(v uint64) string { return fmt.Sprintf("%d", v) }

var fields = []field{
	{
		name: "timeout",
		get:  func(s Set) uint64 { return uint64(s.Timeout) },
		set:  func(s *Set, v uint64) { s.Timeout = time.Duration(v) },
		req: func(l *executorv1.Limits) (uint64, bool) {
			if l.GetTimeout() == nil {
				return 0, false
			}
			if err := l.GetTimeout().CheckValid(); err != nil || l.GetTimeout().AsDuration() < 0 {
				return 0, true
			}
			return uint64(l.GetTimeout().AsDuration()), false
		},
		unit: func(v uint64) string { return time.Duration(v).String() },
	},
	{
		name: "memory_bytes",
		get:  func(s Set) uint64 { return s.MemoryBytes },
		set:  func(s *Set, v uint64) { s.MemoryBytes = v },
		req:  func(l *executorv1.Limits) (uint64, bool) { return l.GetMemoryBytes(), false },
		unit: bytesUnit,
	},
	{
		name: "cpu_millicores",
		get:  func(s Set) uint64 { return uint64(s.CPUMillicores) },
		set:  func(s *Set, v uint64) { s.CPUMillicores = uint32(v) },
		req:  func(l *executorv1.Limits) (uint64, bool) { return uint64(l.GetCpuMillicores()), false },
		unit: plainUnit,
	},
	{
		name: "pids",
		get:  func(s Set) uint64 { return uint64(s.Pids) },
		set:  func(s *Set, v uint64) { s.Pids = uint32(v) },
		req:  func(l *executorv1.Limits) (uint64, bool) { return uint64(l.GetPids()), false },
		unit: plainUnit,
	},
	{
		name: "output_bytes",
		get:  func(s Set) uint64 { return s.OutputBytes },
		set:  func(s *Set, v uint64) { s.OutputBytes = v },
		req:  func(l *executorv1.Limits) (uint64, bool) { return l.GetOutputBytes(), false },
		unit: bytesUnit,
	},
	{
		name: "code_bytes",
		get:  func(s Set) uint64 { return s.CodeBytes },
		set:  func(s *Set, v uint64) { s.CodeBytes = v },
		req:  func(l *executorv1.Limits) (uint64, bool) { return l.GetCodeBytes(), false },
		unit: bytesUnit,
	},
	{
		name: "tmp_bytes",
		get:  func(s Set) uint64 { return s.TmpBytes },
		set:  func(s *Set, v uint64) { s.TmpBytes = v },
		req:  func(l *executorv1.Limits) (uint64, bool) { return l.GetTmpBytes(), false },
		unit: bytesUnit,
	},
	{
		name: "open_files",
		get:  func(s Set) uint64 { return uint64(s.OpenFiles) },
		set:  func(s *Set, v uint64) { s.OpenFiles = uint32(v) },
		req:  func(l *executorv1.Limits) (uint64, bool) { return uint64(l.GetOpenFiles()), false },
		unit: plainUnit,
	},
}

// Resolve applies the request's limits over the defaults. A zero or absent
// field takes the default; a value below Floor or above max is a violation
// named "limits.<field>".
func Resolve(req *executorv1.Limits, def, max Set) (Set, []Violation) {
	out := def
	var vs []Violation
	for _, f := range fields {
		v, invalid := f.req(req)
		name := "limits." + f.name
		switch {
		case invalid:
			vs = append(vs, Violation{name, "must be a valid, non-negative duration"})
		case v == 0:
		case v > f.get(max):
			vs = append(vs, Violation{name, fmt.Sprintf("%s is above the maximum %s", f.unit(v), f.unit(f.get(max)))})
		case v < f.get(Floor):
			vs = append(vs, Violation{name, fmt.Sprintf("%s is below the minimum %s", f.unit(v), f.unit(f.get(Floor)))})
		default:
			f.set(&out, v)
		}
	}
	return out, vs
}

// CheckConfig reports whether def and max form a usable configuration:
// every default at least the floor and at most its maximum.
func CheckConfig(def, max Set) error {
	for _, f := range fields {
		d, m, fl := f.get(def), f.get(max), f.get(Floor)
		if d < fl {
			return fmt.Errorf("default %s %s is below the minimum %s", f.name, f.unit(d), f.unit(fl))
		}
		if d > m {
			return fmt.Errorf("default %s %s is above the maximum %s", f.name, f.unit(d), f.unit(m))
		}
	}
	return nil
}

// Proto returns s as the API message.
func (s Set) Proto() *executorv1.Limits {
	return &executorv1.Limits{
		Timeout:       durationpb.New(s.Timeout),
		MemoryBytes:   s.MemoryBytes,
		CpuMillicores: s.CPUMillicores,
		Pids:          s.Pids,
		OutputBytes:   s.OutputBytes,
		CodeBytes:     s.CodeBytes,
		TmpBytes:      s.TmpBytes,
		OpenFiles:     s.OpenFiles,
	}
}

// ClampOpenFiles lowers the maximum of open files, and the default where it
// is above, to hard: the host's own hard RLIMIT_NOFILE, past which the
// runtime cannot set a sandbox's limit (a request for more would fail as an
// internal error instead of being refused). It reports whether it lowered
// anything.
func ClampOpenFiles(def, max *Set, hard uint64) bool {
	if hard >= uint64(max.OpenFiles) || hard < uint64(Floor.OpenFiles) {
		return false
	}
	max.OpenFiles = uint32(hard)
	def.OpenFiles = min(def.OpenFiles, max.OpenFiles)
	return true
}
