package variants

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// An operator's profile is a YAML file next to the npm files it names:
//
//	version: 1
//	name: acme-tools        # imported as sandpit.local/acme-tools:MAJOR
//	npm: .                  # a directory with package.json and package-lock.json
//	files:                  # optional: files of the operator's, read-only in the image
//	  - { src: acme-ca.pem, dest: /etc/acme/ca.pem }
//
// It builds like node-sdk: the node image, one layer of the packages
// `npm ci` installs from the lock file at /node_modules, and one layer of
// the files.

// File is a file a profile adds: Src on the build machine, Dest in the
// image.
type File struct{ Src, Dest string }

// Bounds of a profile file.
const (
	maxProfileFiles     = 256
	maxProfileFileBytes = 16 << 20
)

var (
	// exactVersion is a pin npm cannot resolve to another version.
	exactVersion  = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`)
	profileNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	// reservedNames are sandpit's own profiles.
	reservedNames = []string{"node", "node-sdk", "node-debug"}
	// reservedDirs are where the image's own files, the program and the
	// mounts the executor makes live: a profile's files go elsewhere.
	reservedDirs = []string{"/usr", "/lib", "/lib64", "/bin", "/sbin", "/sandbox", "/tmp", "/proc", "/sys", "/dev", "/node_modules", "/home", "/root", "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/ssl"}
)

type profileFile struct {
	Version int    `yaml:"version"`
	Name    string `yaml:"name"`
	NPM     string `yaml:"npm"`
	Files   []struct {
		Src  string `yaml:"src"`
		Dest string `yaml:"dest"`
	} `yaml:"files"`
}

// LoadProfile reads the operator's profile at path.
func LoadProfile(p string) (*Variant, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	var pf profileFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&pf); err != nil {
		return nil, fmt.Errorf("profile %s: %w", p, err)
	}
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("profile %s: %s: %s", p, field, fmt.Sprintf(format, args...))
	}
	switch {
	case pf.Version != 1:
		return nil, bad("version", "want 1")
	case !profileNameRE.MatchString(pf.Name):
		return nil, bad("name", "%q: a-z, 0-9 and -, at most 63, starting with a letter or digit", pf.Name)
	case slices.Contains(reservedNames, pf.Name):
		return nil, bad("name", "%s is one of sandpit's own profiles", pf.Name)
	case pf.NPM == "" && len(pf.Files) == 0:
		return nil, bad("npm", "a profile adds npm packages, files or both")
	case len(pf.Files) > maxProfileFiles:
		return nil, bad("files", "%d files, at most %d", len(pf.Files), maxProfileFiles)
	}
	base := filepath.Dir(p)
	v := &Variant{Name: pf.Name, Profile: pf.Name, Title: "sandpit-" + pf.Name, Packages: map[string]string{}}
	if pf.NPM != "" {
		dir := filepath.Join(base, pf.NPM)
		if v.PackageJSON, err = os.ReadFile(filepath.Join(dir, "package.json")); err != nil {
			return nil, bad("npm", "%v", err)
		}
		if v.PackageLock, err = os.ReadFile(filepath.Join(dir, "package-lock.json")); err != nil {
			return nil, bad("npm", "%v (run npm install --package-lock-only --ignore-scripts there)", err)
		}
		var pj struct {
			Dependencies map[string]string `json:"dependencies"`
		}
		if err := json.Unmarshal(v.PackageJSON, &pj); err != nil {
			return nil, bad("npm", "package.json: %v", err)
		}
		for name, version := range pj.Dependencies {
			if !exactVersion.MatchString(version) {
				return nil, bad("npm", "package.json pins %s at %q: pin an exact version", name, version)
			}
			v.Packages[name] = version
		}
	}
	seen := map[string]bool{}
	for i, f := range pf.Files {
		field := fmt.Sprintf("files[%d]", i)
		dest := path.Clean(f.Dest)
		switch {
		case f.Src == "":
			return nil, bad(field+".src", "required")
		case !path.IsAbs(f.Dest) || dest != f.Dest || dest == "/":
			return nil, bad(field+".dest", "%q: an absolute, clean path of a file", f.Dest)
		case seen[dest]:
			return nil, bad(field+".dest", "%s is listed twice", dest)
		}
		for _, r := range reservedDirs {
			if dest == r || strings.HasPrefix(dest, r+"/") {
				return nil, bad(field+".dest", "%s is under %s, which is the image's own or the executor's", dest, r)
			}
		}
		src := filepath.Join(base, f.Src)
		st, err := os.Stat(src)
		switch {
		case err != nil:
			return nil, bad(field+".src", "%v", err)
		case !st.Mode().IsRegular():
			return nil, bad(field+".src", "%s is not a regular file", src)
		case st.Size() > maxProfileFileBytes:
			return nil, bad(field+".src", "%d bytes, at most %d", st.Size(), maxProfileFileBytes)
		}
		seen[dest] = true
		v.Files = append(v.Files, File{Src: src, Dest: dest})
	}
	return v, nil
}
