// Package imageinspect reports what an image holds that a sandbox should
// not need (shells, interpreters, network tools, package managers,
// compilers, setuid, setgid and capability files, world-writable paths) and
// which Node.js it carries, from the image's layers and config alone:
// nothing in it is run.
package imageinspect

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Finding is one path of the image in one class, and why.
type Finding struct {
	Class Class  `json:"class"`
	Path  string `json:"path"`
	// Why says what matched: "name python3", "mode 4755",
	// "xattr security.capability".
	Why string `json:"why"`
}

// Node is what the image says of its Node.js.
type Node struct {
	// Present is whether /usr/local/bin/node exists (after whiteouts).
	Present bool `json:"present"`
	// Version is the first of Versions ("" when none says).
	Version string `json:"version,omitempty"`
	// Versions lists each source and what it says, the binary first:
	// "binary /usr/local/bin/node" (its release URL string), then "label
	// run.sandpit.node.version", "env NODE_VERSION" (the official node
	// images set it).
	Versions []NodeVersion `json:"versions,omitempty"`
}

// NodeVersion is a version and where it was read.
type NodeVersion struct {
	Source  string `json:"source"`
	Version string `json:"version"`
}

// Report is what Inspect found.
type Report struct {
	Node     Node      `json:"node"`
	Findings []Finding `json:"findings"`
	// Sticky lists world-writable directories with the sticky bit (/tmp):
	// not findings, since only a file's owner may remove or rename it
	// there, but listed so a reader sees them.
	Sticky []string `json:"sticky_world_writable,omitempty"`
}

// Forbidden returns the classes present that neither allowed names nor are
// node, in report order.
func (r *Report) Forbidden(allowed []Class) []Class {
	ok := map[Class]bool{ClassNode: true}
	for _, c := range allowed {
		ok[c] = true
	}
	present := map[Class]bool{}
	for _, f := range r.Findings {
		present[f.Class] = true
	}
	var out []Class
	for _, c := range Classes {
		if present[c] && !ok[c] {
			out = append(out, c)
		}
	}
	return out
}

// NodePath is where the images sandpit runs keep node.
const NodePath = "/usr/local/bin/node"

// Inspect reads img's layers, in order and with whiteouts applied (a file a
// later layer deletes is not reported), and its config; findings come in
// the order of Classes, then by path. The image may come
// from an archive (Open) or, later, from containerd's content store.
func Inspect(img v1.Image) (*Report, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read image config: %w", err)
	}
	files, err := flatten(img)
	if err != nil {
		return nil, err
	}
	r := &Report{Findings: []Finding{}}
	for _, p := range sortedKeys(files) {
		found, sticky := classify(files[p].hdr)
		r.Findings = append(r.Findings, found...)
		if sticky {
			r.Sticky = append(r.Sticky, p)
		}
	}
	if node, ok := files[NodePath]; ok {
		r.Node.Present = true
		if node.nodeVersion != "" {
			r.Node.Versions = append(r.Node.Versions, NodeVersion{Source: "binary " + NodePath, Version: node.nodeVersion})
		}
	}
	if v := cfg.Config.Labels["run.sandpit.node.version"]; v != "" {
		r.Node.Versions = append(r.Node.Versions, NodeVersion{Source: "label run.sandpit.node.version", Version: v})
	}
	for _, e := range cfg.Config.Env {
		if v, ok := strings.CutPrefix(e, "NODE_VERSION="); ok && v != "" {
			r.Node.Versions = append(r.Node.Versions, NodeVersion{Source: "env NODE_VERSION", Version: v})
		}
	}
	if len(r.Node.Versions) > 0 {
		r.Node.Version = r.Node.Versions[0].Version
	}
	sort.SliceStable(r.Findings, func(i, j int) bool {
		a, b := r.Findings[i], r.Findings[j]
		if a.Class != b.Class {
			return classRank(a.Class) < classRank(b.Class)
		}
		return a.Path < b.Path
	})
	return r, nil
}

func classRank(c Class) int {
	for i, k := range Classes {
		if k == c {
			return i
		}
	}
	return len(Classes)
}

// releaseMarker precedes the version in the release URLs every official
// node binary embeds (process.release.sourceUrl):
// https://nodejs.org/download/release/v24.21.0/node-v24.21.0.tar.gz.
var (
	releaseMarker = []byte("/download/release/v")
	releaseTail   = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+/`)
)

// scanNodeVersion reads r to its end and returns the version of the first
// release URL in it, or "" when there is none. Reading all of it costs
// little: the tar stream passes over the file's bytes anyway.
func scanNodeVersion(r io.Reader) (string, error) {
	const keep = 64 // longer than the marker and any version after it
	buf := make([]byte, 1<<20)
	n, version := 0, ""
	for {
		m, err := io.ReadFull(r, buf[n:])
		n += m
		for rest := buf[:n]; version == ""; {
			i := bytes.Index(rest, releaseMarker)
			if i < 0 {
				break
			}
			rest = rest[i+len(releaseMarker):]
			if tail := releaseTail.Find(rest); tail != nil {
				version = string(tail[:len(tail)-1])
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return version, nil
		}
		if err != nil {
			return "", err
		}
		if n > keep {
			n = copy(buf, buf[n-keep:n])
		}
	}
}
