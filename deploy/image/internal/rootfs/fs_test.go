package rootfs

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
	"time"
)

func sample(t *testing.T) *FS {
	t.Helper()
	fs := New()
	for _, err := range []error{
		fs.File("usr/lib/x86_64-linux-gnu/libc.so.6", 0o755, []byte("libc")),
		fs.Symlink("usr/lib64/ld.so", "../lib/x86_64-linux-gnu/libc.so.6"),
		fs.Symlink("lib64", "usr/lib64"),
		fs.Symlink("lib", "usr/lib"),
		fs.Dir("tmp", 0o1777, 0, 0),
		fs.File("etc/hosts", 0o644, []byte("127.0.0.1 localhost\n")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return fs
}

func TestWriteTarDeterministicAndComplete(t *testing.T) {
	var a, b bytes.Buffer
	if err := sample(t).WriteTar(&a, time.Unix(42, 0)); err != nil {
		t.Fatal(err)
	}
	if err := sample(t).WriteTar(&b, time.Unix(42, 0)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("same tree gave different tars")
	}
	tr := tar.NewReader(&a)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Format == tar.FormatPAX || len(h.PAXRecords) != 0 {
			t.Errorf("%s: PAX header %v", h.Name, h.PAXRecords)
		}
		if h.ModTime.Unix() != 42 || h.Uid != 0 || h.Uname != "" {
			t.Errorf("%s: mtime %v uid %d uname %q", h.Name, h.ModTime, h.Uid, h.Uname)
		}
		names = append(names, h.Name)
	}
	want := []string{"etc/", "etc/hosts", "lib", "lib64", "tmp/", "usr/", "usr/lib/", "usr/lib/x86_64-linux-gnu/",
		"usr/lib/x86_64-linux-gnu/libc.so.6", "usr/lib64/", "usr/lib64/ld.so"}
	if len(names) != len(want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("entries %v, want %v", names, want)
		}
	}
}

func TestResolveThroughLinkedDirs(t *testing.T) {
	fs := sample(t)
	e, err := fs.Resolve("lib64/ld.so")
	if err != nil {
		t.Fatal(err)
	}
	if e.Path != "usr/lib/x86_64-linux-gnu/libc.so.6" {
		t.Fatalf("resolved to %s", e.Path)
	}
	if _, err := fs.Resolve("lib64/missing.so"); err == nil {
		t.Fatal("missing file resolved")
	}
}

func TestConflictingPathsRejected(t *testing.T) {
	fs := New()
	if err := fs.File("etc/passwd", 0o644, []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := fs.File("etc/passwd", 0o644, []byte("b")); err == nil {
		t.Fatal("second etc/passwd accepted")
	}
	if err := fs.Dir("usr", 0o755, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := fs.Dir("usr", 0o755, 0, 0); err != nil {
		t.Fatalf("identical dir twice: %v", err)
	}
}
