package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// File is one file of the program, its path relative to the code directory.
type File struct {
	Path    string
	Content []byte
}

// writeCode lays the files out under dir (which exists), readable by anyone and writable by
// no one, since the sandbox user is not the owner and the mount is read-only
// anyway. Paths were validated by the caller; filepath.IsLocal is checked
// again because a path escaping dir would write onto the host.
func writeCode(dir string, files []File) error {
	for _, f := range files {
		if !filepath.IsLocal(f.Path) {
			return fmt.Errorf("write code: path %q is not local", f.Path)
		}
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("create code dir: %w", err)
		}
		if err := os.WriteFile(p, f.Content, 0o444); err != nil {
			return fmt.Errorf("write code: %w", err)
		}
	}
	return nil
}

// writeExtraFiles writes each file under dir and returns the bind mounts
// that place them, read-only, at their paths in the sandbox.
func writeExtraFiles(dir string, files []File) ([]specs.Mount, error) {
	if len(files) == 0 {
		return nil, nil
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create extra files dir: %w", err)
	}
	var mounts []specs.Mount
	for i, f := range files {
		if !filepath.IsAbs(f.Path) {
			return nil, fmt.Errorf("extra file %q: path must be absolute", f.Path)
		}
		src := filepath.Join(dir, strconv.Itoa(i))
		if err := os.WriteFile(src, f.Content, 0o444); err != nil {
			return nil, fmt.Errorf("write extra file: %w", err)
		}
		mounts = append(mounts, specs.Mount{
			Destination: f.Path,
			Type:        "bind",
			Source:      src,
			Options:     []string{"bind", "ro", "nosuid", "nodev", "noexec"},
		})
	}
	return mounts, nil
}
