package sandbox

import (
	"path"
	"strconv"
	"strings"
)

// StripTypesFlag turns on node's type stripping on the releases that have it
// behind a flag.
const StripTypesFlag = "--experimental-strip-types"

// IsTypeScript reports whether node type-strips a file of this name: .ts,
// .mts and .cts. (.tsx is not among them: node does not strip JSX.)
func IsTypeScript(name string) bool {
	switch path.Ext(name) {
	case ".ts", ".mts", ".cts":
		return true
	}
	return false
}

// typeScriptFlags returns the flags node of nodeVersion needs to run
// entrypoint: StripTypesFlag for a TypeScript entrypoint on the releases
// that have type stripping behind it (22.6 to 22.17, 23.0 to 23.5), nothing
// otherwise. Releases from 22.18 and 23.6 on strip types by default, and
// print no warning for it; older ones have no type stripping, and an
// unknown version gets node's default: in both cases node itself says what
// it cannot run.
func typeScriptFlags(nodeVersion, entrypoint string) []string {
	if !IsTypeScript(entrypoint) {
		return nil
	}
	major, minor, ok := majorMinor(nodeVersion)
	if ok && (major == 22 && minor >= 6 && minor < 18 || major == 23 && minor < 6) {
		return []string{StripTypesFlag}
	}
	return nil
}

// majorMinor parses the start of a version such as "22.17.1" or "v23.5.0".
func majorMinor(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	return major, minor, err1 == nil && err2 == nil
}
