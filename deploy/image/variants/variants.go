// Package variants holds the inputs of the sandbox image's test variants:
// images that are the default image plus one layer of preinstalled npm
// packages, for tests that need real SDKs inside the sandbox (the egress
// proxy's tests run the Stripe SDK and axios against a local stripe-mock).
//
// Each variant is a directory here with a package.json that pins exact
// versions and the package-lock.json npm generated from it (with
// `npm install --package-lock-only --ignore-scripts`). The lock file's
// integrity hashes are what the build trusts; the builder installs with
// `npm ci` and caches the result under the lock file's sha256.
//
// How to bump a variant: edit the versions in its package.json (look them up
// with `npm view PACKAGE version`), run
// `npm install --package-lock-only --ignore-scripts` in its directory, update
// Packages below, and run `GOWORK=off go test ./...` in deploy/image.
package variants

import (
	"embed"
	"fmt"
	"sort"
)

//go:embed sdk/package.json sdk/package-lock.json
var files embed.FS

// Variant is one test variant of the sandbox image.
type Variant struct {
	// Name is what --variant selects.
	Name string
	// Profile is the image's name: it is imported as
	// sandpit.local/PROFILE:MAJOR.
	Profile string
	// Title is the org.opencontainers.image.title label.
	Title string
	// Packages are the top-level npm packages and their pinned versions,
	// as in package.json (the tests check the installed versions).
	Packages map[string]string
	// PackageJSON and PackageLock are the embedded package.json and
	// package-lock.json; nil for a variant without npm packages.
	PackageJSON, PackageLock []byte
	// Shell adds a shell (busybox): the debug variant, for operators.
	Shell bool
	// Files are an operator's profile's own files (LoadProfile).
	Files []File
}

var all = map[string]*Variant{
	"debug": {
		Name:    "debug",
		Profile: "node-debug",
		Title:   "sandpit-node-debug",
		Shell:   true,
	},
	"sdk": {
		Name:    "sdk",
		Profile: "node-sdk",
		Title:   "sandpit-node-sdk",
		Packages: map[string]string{
			"@anthropic-ai/sdk":  "1.15.0",
			"@aws-sdk/client-s3": "3.1175.0",
			"axios":              "1.21.1",
			"dayjs":              "1.11.23",
			"lodash":             "4.18.1",
			"moment":             "2.31.0",
			"node-fetch":         "3.3.2",
			"openai":             "7.59.0",
			"stripe":             "23.1.0",
			"uuid":               "14.0.3",
			"zod":                "4.6.7",
		},
	},
}

func init() {
	for name, v := range all {
		if v.Shell {
			continue
		}
		var err error
		if v.PackageJSON, err = files.ReadFile(name + "/package.json"); err != nil {
			panic(err)
		}
		if v.PackageLock, err = files.ReadFile(name + "/package-lock.json"); err != nil {
			panic(err)
		}
	}
}

// Get returns the variant called name.
func Get(name string) (*Variant, error) {
	v, ok := all[name]
	if !ok {
		return nil, fmt.Errorf("unknown image variant %q (have %v)", name, Names())
	}
	return v, nil
}

// Names lists the variants, sorted.
func Names() []string {
	out := make([]string, 0, len(all))
	for n := range all {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
