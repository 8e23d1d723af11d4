package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/sandpit-run/sandpit/deploy/image/internal/image"
	"github.com/sandpit-run/sandpit/deploy/image/variants"
)

// VariantModulesDir is where a variant's npm packages go in the image.
//
// /node_modules rather than /usr/local/lib/node_modules with NODE_PATH:
// Node's resolver walks up from the importing file's directory, so code
// anywhere under /sandbox finds /node_modules with both require() and ESM
// import (ESM ignores NODE_PATH), and it keeps working when the executor
// replaces the image's environment. Code that ships its own
// /sandbox/node_modules still takes precedence.
const VariantModulesDir = "/node_modules"

// installLayout versions what InstallVariant leaves in the cache besides
// npm's own output (the clean-up below); bump it when that changes so old
// cache entries are not reused.
const installLayout = "1"

// InstallVariant returns a directory holding the node_modules tree of v:
// `npm ci` of its lock file, without dev dependencies, scripts, bin links or
// execute bits. The result is cached under cacheDir keyed by the lock file's
// sha256, so a rebuild does not run npm at all.
func InstallVariant(ctx context.Context, v *variants.Variant, cacheDir string, log *slog.Logger) (string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sum := sha256.Sum256(v.PackageLock)
	key := fmt.Sprintf("%s-%s-l%s", v.Name, hex.EncodeToString(sum[:]), installLayout)
	parent := filepath.Join(cacheDir, "npm")
	dst := filepath.Join(parent, key)
	modules := filepath.Join(dst, "node_modules")
	if st, err := os.Stat(modules); err == nil && st.IsDir() {
		log.Info("using cached npm packages", "variant", v.Name, "dir", dst)
		return modules, nil
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("create npm cache dir: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, ".install-"+v.Name+"-")
	if err != nil {
		return "", fmt.Errorf("create temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.WriteFile(filepath.Join(tmp, "package.json"), v.PackageJSON, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "package-lock.json"), v.PackageLock, 0o644); err != nil {
		return "", err
	}
	log.Info("installing npm packages", "variant", v.Name)
	// npm ci installs exactly the lock file and checks every tarball
	// against its integrity hash; --ignore-scripts keeps package install
	// scripts from running on the build machine.
	cmd := exec.CommandContext(ctx, "npm", "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund")
	cmd.Dir = tmp
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("npm ci for variant %s: %w: %s", v.Name, err, strings.TrimSpace(out.String()))
	}
	if err := cleanModules(filepath.Join(tmp, "node_modules")); err != nil {
		return "", fmt.Errorf("variant %s: %w", v.Name, err)
	}
	for _, f := range []string{"package.json", "package-lock.json"} {
		if err := os.Remove(filepath.Join(tmp, f)); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dst); err != nil {
		// Another build may have filled the same entry meanwhile; it has
		// the same content.
		if st, serr := os.Stat(modules); serr == nil && st.IsDir() {
			return modules, nil
		}
		return "", fmt.Errorf("move npm packages into cache: %w", err)
	}
	return modules, nil
}

// cleanModules makes an npm-installed tree fit the sandbox image: it drops
// npm's bookkeeping (.package-lock.json) and bin links (.bin), clears every
// execute bit (node reads these files; nothing in them is exec'd), and
// refuses anything that is not a plain file or directory, and native addons
// (*.node, shared objects node would dlopen).
func cleanModules(dir string) error {
	if err := os.Remove(filepath.Join(dir, ".package-lock.json")); err != nil && !errors.Is(err, iofs.ErrNotExist) {
		return err
	}
	return filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir() && d.Name() == ".bin":
			if err := os.RemoveAll(p); err != nil {
				return err
			}
			return filepath.SkipDir
		case d.IsDir():
			return os.Chmod(p, 0o755)
		case d.Type().IsRegular():
			if strings.HasSuffix(d.Name(), ".node") {
				return fmt.Errorf("%s: native addon, not allowed in the image", p)
			}
			return os.Chmod(p, 0o644)
		default:
			return fmt.Errorf("%s: %s, only plain files and directories are allowed in the image", p, d.Type())
		}
	})
}

// VariantLabels returns the labels of variant v: base's labels, its title,
// its name and the version of each top-level npm package.
func VariantLabels(v *variants.Variant, base map[string]string) map[string]string {
	l := maps.Clone(base)
	if l == nil {
		l = map[string]string{}
	}
	l["org.opencontainers.image.title"] = v.Title
	l["run.sandpit.variant"] = v.Name
	for name, version := range v.Packages {
		l["run.sandpit.npm."+name] = version
	}
	return l
}

// labelled is img with v's labels (VariantLabels) and extra.
func labelled(img v1.Image, v *variants.Variant, extra map[string]string) (v1.Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("variant %s: read config: %w", v.Name, err)
	}
	cfg := cf.Config.DeepCopy()
	cfg.Labels = VariantLabels(v, cfg.Labels)
	maps.Copy(cfg.Labels, extra)
	img, err = mutate.Config(img, *cfg)
	if err != nil {
		return nil, fmt.Errorf("variant %s: set labels: %w", v.Name, err)
	}
	return img, nil
}

// VariantImage returns base plus one layer holding the node_modules tree
// at modules (from InstallVariant) at VariantModulesDir, with v's labels.
// The base layer and the rest of the config are unchanged.
func VariantImage(base v1.Image, v *variants.Variant, modules, workDir string, created time.Time) (v1.Image, error) {
	var pkgs []string
	for _, name := range slices.Sorted(maps.Keys(v.Packages)) {
		pkgs = append(pkgs, name+"@"+v.Packages[name])
	}
	img, err := image.AppendDir(base, modules, VariantModulesDir, workDir, created,
		fmt.Sprintf("sandpit-image: variant %s: npm ci %s at %s", v.Name, strings.Join(pkgs, " "), VariantModulesDir))
	if err != nil {
		return nil, fmt.Errorf("variant %s: %w", v.Name, err)
	}
	if img, err = labelled(img, v, nil); err != nil {
		return nil, err
	}
	return img, nil
}
