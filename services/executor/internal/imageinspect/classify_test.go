package imageinspect

import (
	"archive/tar"
	"reflect"
	"strings"
	"testing"
)

// TestClassify: names count with their version suffix and cross triplet
// taken off, on executables and links only; mode bits and the capability
// xattr count on any entry but a symlink; setgid and sticky
// world-writable directories are no findings.
func TestClassify(t *testing.T) {
	tests := []struct {
		name   string
		hdr    tar.Header
		want   []Class
		sticky bool
	}{
		{"versioned interpreter", tar.Header{Name: "usr/bin/python3.11", Typeflag: tar.TypeReg, Mode: 0o755}, []Class{ClassInterpreter}, false},
		{"cross compiler", tar.Header{Name: "usr/bin/x86_64-linux-gnu-gcc-12", Typeflag: tar.TypeReg, Mode: 0o755}, []Class{ClassCompiler}, false},
		{"versioned pip", tar.Header{Name: "usr/local/bin/pip3", Typeflag: tar.TypeReg, Mode: 0o755}, []Class{ClassPackageManager}, false},
		{"hard link", tar.Header{Name: "bin/bash", Typeflag: tar.TypeLink, Linkname: "bin/rbash"}, []Class{ClassShell}, false},
		{"only the owner may run it", tar.Header{Name: "usr/bin/wget", Typeflag: tar.TypeReg, Mode: 0o700}, []Class{ClassNetworkTool}, false},
		{"not executable", tar.Header{Name: "usr/share/doc/perl", Typeflag: tar.TypeReg, Mode: 0o644}, nil, false},
		{"directory named like a tool", tar.Header{Name: "usr/lib/ruby/", Typeflag: tar.TypeDir, Mode: 0o755}, nil, false},
		{"library", tar.Header{Name: "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", Typeflag: tar.TypeReg, Mode: 0o755}, nil, false},
		{"setuid shell", tar.Header{Name: "bin/ash", Typeflag: tar.TypeReg, Mode: 0o4755}, []Class{ClassShell, ClassSetuid}, false},
		{"setgid directory", tar.Header{Name: "var/mail/", Typeflag: tar.TypeDir, Mode: 0o2775}, nil, false},
		{"symlink mode bits", tar.Header{Name: "usr/bin/x", Typeflag: tar.TypeSymlink, Linkname: "y", Mode: 0o7777}, nil, false},
		{"world-writable file", tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o666}, []Class{ClassWorldWritable}, false},
		{"world-writable device", tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666}, []Class{ClassWorldWritable}, false},
		{"sticky", tar.Header{Name: "var/tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil, true},
		{"capability", tar.Header{Name: "usr/bin/ping", Typeflag: tar.TypeReg, Mode: 0o755,
			PAXRecords: map[string]string{capabilityRecord: "\x01"}}, []Class{ClassNetworkTool, ClassCapability}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			found, sticky := classify(&tt.hdr)
			var got []Class
			for _, f := range found {
				got = append(got, f.Class)
			}
			if !reflect.DeepEqual(got, tt.want) || sticky != tt.sticky {
				t.Errorf("classify(%s) = %+v, sticky %v; want %v, sticky %v", tt.hdr.Name, found, sticky, tt.want, tt.sticky)
			}
		})
	}
}

// FuzzClassify: any name and mode classifies without panicking, and every
// finding names an absolute path and one of the classes.
func FuzzClassify(f *testing.F) {
	f.Add("usr/bin/python3", int64(0o755), byte(tar.TypeReg))
	f.Add("../../bin/sh", int64(0o7777), byte(tar.TypeSymlink))
	f.Fuzz(func(t *testing.T, name string, mode int64, typ byte) {
		found, _ := classify(&tar.Header{Name: name, Mode: mode, Typeflag: typ})
		for _, fd := range found {
			if fd.Path == "" || fd.Path[0] != '/' || classRank(fd.Class) == len(Classes) {
				t.Errorf("%q: finding %+v", name, fd)
			}
		}
	})
}

// TestScanNodeVersion: the version is found across read boundaries and
// after a marker that is not followed by one.
func TestScanNodeVersion(t *testing.T) {
	pad := string(make([]byte, 1<<20-10))
	for body, want := range map[string]string{
		pad + "https://nodejs.org/download/release/v24.21.0/node": "24.21.0",
		"/download/release/vX/ then /download/release/v1.2.3/":    "1.2.3",
		"no marker": "",
	} {
		if got, err := scanNodeVersion(strings.NewReader(body)); err != nil || got != want {
			t.Errorf("scan(%d bytes ending %q) = %q, %v; want %q", len(body), body[max(0, len(body)-30):], got, err, want)
		}
	}
}
