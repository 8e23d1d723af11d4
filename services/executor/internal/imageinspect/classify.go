package imageinspect

import (
	"archive/tar"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strings"
)

// Class is what a finding is. The set is fixed: a CLI's --allow and the
// executor's refusal name these.
type Class string

// The classes, in the order a report lists them.
const (
	ClassNode           Class = "node"
	ClassShell          Class = "shell"
	ClassInterpreter    Class = "interpreter"
	ClassNetworkTool    Class = "network-tool"
	ClassPackageManager Class = "package-manager"
	ClassCompiler       Class = "compiler"
	ClassSetuid         Class = "setuid"
	ClassSetgid         Class = "setgid"
	ClassCapability     Class = "capability"
	ClassWorldWritable  Class = "world-writable"
)

// Classes lists every class in report order.
var Classes = []Class{ClassNode, ClassShell, ClassInterpreter, ClassNetworkTool, ClassPackageManager,
	ClassCompiler, ClassSetuid, ClassSetgid, ClassCapability, ClassWorldWritable}

// ParseClass returns the class named s.
func ParseClass(s string) (Class, error) {
	for _, c := range Classes {
		if string(c) == s {
			return c, nil
		}
	}
	return "", fmt.Errorf("unknown class %q (one of %s)", s, strings.Join(ClassNames(), ", "))
}

// ClassNames returns the classes' names in report order.
func ClassNames() []string {
	names := make([]string, len(Classes))
	for i, c := range Classes {
		names[i] = string(c)
	}
	return names
}

// byName maps an executable's base name, its version suffix and target
// triplet taken off (see baseName), to its class.
var byName = map[string]Class{}

func init() {
	for c, names := range map[Class]string{
		ClassNode:  "node nodejs",
		ClassShell: "sh bash rbash dash ash zsh ksh mksh pdksh csh tcsh fish yash posh busybox toybox",
		ClassInterpreter: "python pypy perl ruby irb php lua luajit tclsh wish expect deno bun java jshell jrunscript " +
			"awk gawk mawk nawk qjs Rscript julia guile pwsh",
		ClassNetworkTool: "curl wget nc ncat netcat socat ssh scp sftp telnet ftp tftp rsync nmap ping ping6 " +
			"dig nslookup openssl aria2c lynx w3m",
		ClassPackageManager: "apt apt-get aptitude dpkg apk yum dnf microdnf rpm zypper pacman pip pipx easy_install " +
			"gem npm npx yarn yarnpkg pnpm pnpx corepack cargo composer conda",
		ClassCompiler: "gcc g++ cc c++ cpp clang clang++ go rustc tcc as ld ld.bfd ld.gold ld.lld lld gfortran " +
			"javac nasm yasm zig",
	} {
		for _, n := range strings.Fields(names) {
			byName[n] = c
		}
	}
}

var (
	// versionSuffix is what distributions append to a versioned
	// executable's name: python3.11, gcc-12, lua5.4, pip3.
	versionSuffix = regexp.MustCompile(`[-.]?[0-9][0-9.]*$`)
	// triplet is a cross tool's target prefix: x86_64-linux-gnu-gcc-12.
	triplet = regexp.MustCompile(`^[A-Za-z0-9_]+-(?:[a-z]+-)?linux-(?:gnu|musl)[a-z]*-`)
)

// baseName is the name byName is keyed by.
func baseName(name string) string {
	name = triplet.ReplaceAllString(name, "")
	if n := versionSuffix.ReplaceAllString(name, ""); n != "" {
		return n
	}
	return name
}

// imagePath is a tar entry's name as an absolute path in the image.
func imagePath(name string) string {
	return path.Clean("/" + name)
}

// capabilityRecord is the PAX record a tar writer gives a file's
// security.capability extended attribute (file capabilities).
const capabilityRecord = "SCHILY.xattr.security.capability"

// classify returns what one entry of the flattened file system is found
// to be. A regular file counts by name only when someone may execute it
// (a bash completion file named curl is no curl); a symlink or hard link
// counts by its own name (/bin/sh -> busybox is a shell), whatever its
// target. Setgid directories are common and harmless and are not listed;
// world-writable directories with the sticky bit (/tmp) are not findings:
// they come back as sticky so a report can note them.
func classify(hdr *tar.Header) (found []Finding, sticky bool) {
	p := imagePath(hdr.Name)
	mode := hdr.FileInfo().Mode()
	isLink := hdr.Typeflag == tar.TypeSymlink || hdr.Typeflag == tar.TypeLink
	if c, ok := byName[baseName(path.Base(p))]; ok && (isLink || (mode.IsRegular() && mode.Perm()&0o111 != 0)) {
		f := Finding{Class: c, Path: p, Why: "name " + path.Base(p)}
		if isLink {
			f.Why += " (link to " + hdr.Linkname + ")"
		}
		found = append(found, f)
	}
	if hdr.Typeflag == tar.TypeSymlink {
		return found, false // a symlink's own mode bits mean nothing
	}
	bits := fmt.Sprintf("mode %04o", hdr.Mode&0o7777)
	if mode&fs.ModeSetuid != 0 {
		found = append(found, Finding{Class: ClassSetuid, Path: p, Why: bits})
	}
	if mode&fs.ModeSetgid != 0 && !mode.IsDir() {
		found = append(found, Finding{Class: ClassSetgid, Path: p, Why: bits})
	}
	if hdr.PAXRecords[capabilityRecord] != "" {
		found = append(found, Finding{Class: ClassCapability, Path: p, Why: "xattr security.capability"})
	}
	if mode.Perm()&0o002 != 0 {
		if mode.IsDir() && mode&fs.ModeSticky != 0 {
			return found, true
		}
		found = append(found, Finding{Class: ClassWorldWritable, Path: p, Why: bits})
	}
	return found, false
}
