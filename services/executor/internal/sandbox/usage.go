package sandbox

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Usage is what a sandbox consumed, read from its cgroup after the program
// exited and before the task is deleted (deleting it removes the cgroup).
type Usage struct {
	CPU        time.Duration
	PeakMemory uint64
	OOMKills   uint64
}

// cgroupRoot is where the cgroup hierarchies are mounted.
var cgroupRoot = "/sys/fs/cgroup"

// readUsage reads the cgroup at path (the spec's cgroupsPath) from the v1
// hierarchies when the memory controller is mounted there, else from the
// unified v2 hierarchy. peak, when set, is the v2 memory.peak opened (and
// reset) earlier: the peak since the reset is read through it.
func readUsage(path string, peak *os.File) (Usage, error) {
	v1mem := filepath.Join(cgroupRoot, "memory", path)
	if _, err := os.Stat(v1mem); err == nil {
		return readUsageV1(path)
	}
	return readUsageV2(filepath.Join(cgroupRoot, path), peak)
}

func readUsageV1(path string) (Usage, error) {
	var u Usage
	mem := filepath.Join(cgroupRoot, "memory", path)
	peak, err := readUint(filepath.Join(mem, "memory.max_usage_in_bytes"))
	if err != nil {
		return u, err
	}
	u.PeakMemory = peak
	oom, err := readKeyed(filepath.Join(mem, "memory.oom_control"), "oom_kill")
	if err != nil {
		return u, err
	}
	u.OOMKills = oom
	cpuNS, err := readUint(filepath.Join(cgroupRoot, "cpuacct", path, "cpuacct.usage"))
	if err != nil {
		return u, err
	}
	u.CPU = time.Duration(cpuNS)
	return u, nil
}

func readUsageV2(dir string, peakFile *os.File) (Usage, error) {
	var u Usage
	var peak uint64
	var err error
	if peakFile != nil {
		peak, err = preadUint(peakFile)
	} else {
		peak, err = readUint(filepath.Join(dir, "memory.peak"))
	}
	if err != nil {
		return u, err
	}
	u.PeakMemory = peak
	oom, err := readKeyed(filepath.Join(dir, "memory.events"), "oom_kill")
	if err != nil {
		return u, err
	}
	u.OOMKills = oom
	usec, err := readKeyed(filepath.Join(dir, "cpu.stat"), "usage_usec")
	if err != nil {
		return u, err
	}
	u.CPU = time.Duration(usec) * time.Microsecond
	return u, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read cgroup file: %w", err)
	}
	return parseUint(path, b)
}

// preadUint reads f's value from its start, through the same descriptor.
func preadUint(f *os.File) (uint64, error) {
	b := make([]byte, 32)
	n, err := f.ReadAt(b, 0)
	if err != nil && n == 0 {
		return 0, fmt.Errorf("read cgroup file: %w", err)
	}
	return parseUint(f.Name(), b[:n])
}

func parseUint(path string, b []byte) (uint64, error) {
	v, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}

// readKeyed reads the value of key from a "key value" per line file.
func readKeyed(path, key string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read cgroup file: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte(" "))
		if ok && string(k) == key {
			n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse %s in %s: %w", key, path, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("read cgroup file %s: no %s", path, key)
}
