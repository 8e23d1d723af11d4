// Package rootfs assembles the sandbox image's filesystem from the verified
// inputs and writes it as a deterministic tar stream.
//
// The filesystem is held as a tree of entries rather than a directory on disk
// because a real directory would pick up the build machine's umask, owners
// and timestamps; here every attribute is chosen, so the same inputs give the
// same bytes.
package rootfs

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
)

// Entry is one file, directory or symlink of the filesystem.
type Entry struct {
	// Path is relative to the root, slash-separated, without a leading or
	// trailing slash.
	Path     string
	Type     byte // tar.TypeDir, tar.TypeReg or tar.TypeSymlink
	Mode     int64
	UID, GID int
	Linkname string
	Size     int64
	// Data holds small files; Open streams large ones (the node binary) so
	// they are not held in memory.
	Data []byte
	Open func() (io.ReadCloser, error)
}

// FS is an in-memory description of a filesystem tree.
type FS struct {
	entries map[string]*Entry
}

// New returns an empty FS.
func New() *FS { return &FS{entries: map[string]*Entry{}} }

func clean(p string) (string, error) {
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" || c == "." {
		return "", fmt.Errorf("invalid path %q", p)
	}
	return c, nil
}

// add inserts e. Adding the same directory twice with the same attributes is
// allowed (several packages ship the same parents); any other collision is an
// error, because two inputs disagreeing about a path is a packaging bug to
// look at, not something to resolve silently.
func (fs *FS) add(e *Entry) error {
	p, err := clean(e.Path)
	if err != nil {
		return fmt.Errorf("add entry: %w", err)
	}
	e.Path = p
	if old, ok := fs.entries[p]; ok {
		if old.Type == tar.TypeDir && e.Type == tar.TypeDir && old.Mode == e.Mode && old.UID == e.UID && old.GID == e.GID {
			return nil
		}
		return fmt.Errorf("add %s: path already present", p)
	}
	fs.entries[p] = e
	return nil
}

// Dir adds a directory.
func (fs *FS) Dir(p string, mode int64, uid, gid int) error {
	return fs.add(&Entry{Path: p, Type: tar.TypeDir, Mode: mode, UID: uid, GID: gid})
}

// File adds a small regular file owned by root.
func (fs *FS) File(p string, mode int64, data []byte) error {
	return fs.add(&Entry{Path: p, Type: tar.TypeReg, Mode: mode, Size: int64(len(data)), Data: data})
}

// StreamFile adds a regular file owned by root whose content is read from
// open when the tar is written.
func (fs *FS) StreamFile(p string, mode, size int64, open func() (io.ReadCloser, error)) error {
	return fs.add(&Entry{Path: p, Type: tar.TypeReg, Mode: mode, Size: size, Open: open})
}

// Symlink adds a symbolic link.
func (fs *FS) Symlink(p, target string) error {
	return fs.add(&Entry{Path: p, Type: tar.TypeSymlink, Mode: 0o777, Linkname: target})
}

// Get returns the entry at p, if any.
func (fs *FS) Get(p string) (*Entry, bool) {
	c, err := clean(p)
	if err != nil {
		return nil, false
	}
	e, ok := fs.entries[c]
	return e, ok
}

// Resolve follows symlinks from p (relative targets against their directory,
// absolute ones against the root, at most 16 hops) and returns the final
// entry. Used to prove that the loader and every library node needs are
// reachable the way the dynamic loader will look for them.
func (fs *FS) Resolve(p string) (*Entry, error) {
	cur := p
	for range 16 {
		// Resolve symlinked parent directories too (/lib64 -> usr/lib64).
		c, err := fs.resolveParents(cur)
		if err != nil {
			return nil, err
		}
		e, ok := fs.entries[c]
		if !ok {
			return nil, fmt.Errorf("resolve %s: %s does not exist", p, c)
		}
		if e.Type != tar.TypeSymlink {
			return e, nil
		}
		if strings.HasPrefix(e.Linkname, "/") {
			cur = e.Linkname
		} else {
			cur = path.Join(path.Dir(c), e.Linkname)
		}
	}
	return nil, fmt.Errorf("resolve %s: too many symlinks", p)
}

func (fs *FS) resolveParents(p string) (string, error) {
	c, err := clean(p)
	if err != nil {
		return "", err
	}
	parts := strings.Split(c, "/")
	done := ""
	for i, part := range parts {
		next := path.Join(done, part)
		if i < len(parts)-1 {
			if e, ok := fs.entries[next]; ok && e.Type == tar.TypeSymlink {
				target := e.Linkname
				if !strings.HasPrefix(target, "/") {
					target = path.Join(path.Dir(next), target)
				}
				return fs.resolveParents(path.Join(target, path.Join(parts[i+1:]...)))
			}
		}
		done = next
	}
	return done, nil
}

// Paths returns every path, sorted.
func (fs *FS) Paths() []string {
	out := make([]string, 0, len(fs.entries))
	for p := range fs.entries {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// WriteTar writes the tree as a tar stream: parents created as root-owned
// 0755 directories where missing, entries sorted by path, every timestamp
// set to mtime (whole seconds, so archive/tar emits plain ustar headers
// without PAX time records), no user or group names, and no other metadata
// from the build machine.
func (fs *FS) WriteTar(w io.Writer, mtime time.Time) error {
	for _, p := range fs.Paths() {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := fs.entries[d]; !ok {
				if err := fs.Dir(d, 0o755, 0, 0); err != nil {
					return fmt.Errorf("write tar: %w", err)
				}
			}
		}
	}
	mtime = time.Unix(mtime.Unix(), 0).UTC()
	tw := tar.NewWriter(w)
	for _, p := range fs.Paths() {
		e := fs.entries[p]
		hdr := &tar.Header{
			Typeflag: e.Type,
			Name:     e.Path,
			Linkname: e.Linkname,
			Mode:     e.Mode,
			Uid:      e.UID,
			Gid:      e.GID,
			ModTime:  mtime,
		}
		switch e.Type {
		case tar.TypeDir:
			hdr.Name += "/"
		case tar.TypeReg:
			hdr.Size = e.Size
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("write tar header %s: %w", p, err)
		}
		if e.Type != tar.TypeReg {
			continue
		}
		var r io.ReadCloser
		if e.Open != nil {
			var err error
			if r, err = e.Open(); err != nil {
				return fmt.Errorf("open %s: %w", p, err)
			}
		} else {
			r = io.NopCloser(bytes.NewReader(e.Data))
		}
		n, err := io.Copy(tw, r)
		r.Close()
		if err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		if n != e.Size {
			return fmt.Errorf("write %s: got %d bytes, declared %d", p, n, e.Size)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("close tar: %w", err)
	}
	return nil
}
