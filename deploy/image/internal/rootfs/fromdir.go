package rootfs

import (
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path"
	"path/filepath"
)

// FromDir describes the tree under src as if it lived at dest in the image
// (for an extra layer such as preinstalled npm packages under
// /usr/local/lib/node_modules). Attributes are normalised like the base
// layer's: root owner, directories 0755, files 0755 if the host copy has any
// execute bit and 0644 otherwise, so the layer does not depend on who ran
// npm install, their umask, or when.
func FromDir(src, dest string) (*FS, error) {
	fs := New()
	err := filepath.WalkDir(src, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := path.Join(dest, filepath.ToSlash(rel))
		if rel == "." && (dest == "" || dest == "/") {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			return fs.Dir(target, 0o755, 0, 0)
		case info.Mode()&os.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return fs.Symlink(target, link)
		case info.Mode().IsRegular():
			mode := int64(0o644)
			if info.Mode()&0o111 != 0 {
				mode = 0o755
			}
			return fs.StreamFile(target, mode, info.Size(), func() (io.ReadCloser, error) { return os.Open(p) })
		default:
			return fmt.Errorf("%s: unsupported file type %s", p, info.Mode().Type())
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read layer dir %s: %w", src, err)
	}
	return fs, nil
}
