package sandbox

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReadUsage(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  Usage
	}{
		{"cgroup v1", map[string]string{
			"memory/ns/x1/memory.max_usage_in_bytes": "1048576\n",
			"memory/ns/x1/memory.oom_control":        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
			"cpuacct/ns/x1/cpuacct.usage":            "1500000000\n",
		}, Usage{CPU: 1500 * time.Millisecond, PeakMemory: 1 << 20, OOMKills: 2}},
		{"cgroup v2", map[string]string{
			"ns/x1/memory.peak":   "2097152\n",
			"ns/x1/memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
			"ns/x1/cpu.stat":      "usage_usec 250000\nuser_usec 200000\nsystem_usec 50000\n",
		}, Usage{CPU: 250 * time.Millisecond, PeakMemory: 2 << 20, OOMKills: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cgroupRoot = t.TempDir()
			writeFiles(t, cgroupRoot, tt.files)
			got, err := readUsage("/ns/x1", nil)
			if err != nil || got != tt.want {
				t.Errorf("readUsage = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	cgroupRoot = t.TempDir()
	if _, err := readUsage("/ns/missing", nil); err == nil {
		t.Error("readUsage of a missing cgroup succeeded")
	}
}
