package variants

import (
	"encoding/json"
	"maps"
	"testing"
)

// reviewedBins are the bin entries of the variants' packages that were
// looked at: node scripts (#!/usr/bin/env node, which the image cannot run
// as commands: it has no env), whose links npm ci is told not to make.
var reviewedBins = map[string]bool{"anthropic-ai-sdk": true, "uuid": true}

// TestPinsConsistent checks that each variant's Packages, package.json and
// package-lock.json agree, and that every pin is an exact version with an
// integrity hash in the lock file.
func TestPinsConsistent(t *testing.T) {
	for _, name := range Names() {
		v, err := Get(name)
		if err != nil {
			t.Fatal(err)
		}
		if v.Shell {
			if v.PackageJSON != nil || len(v.Packages) != 0 {
				t.Errorf("%s: a shell variant with npm packages", name)
			}
			continue
		}
		var pj struct {
			Dependencies    map[string]string `json:"dependencies"`
			DevDependencies map[string]string `json:"devDependencies"`
		}
		if err := json.Unmarshal(v.PackageJSON, &pj); err != nil {
			t.Fatalf("%s/package.json: %v", name, err)
		}
		if !maps.Equal(pj.Dependencies, v.Packages) {
			t.Errorf("%s: package.json dependencies %v, Packages %v", name, pj.Dependencies, v.Packages)
		}
		if len(pj.DevDependencies) != 0 {
			t.Errorf("%s: package.json has devDependencies", name)
		}
		var lock struct {
			LockfileVersion int `json:"lockfileVersion"`
			Packages        map[string]struct {
				Version      string            `json:"version"`
				Integrity    string            `json:"integrity"`
				Dependencies map[string]string `json:"dependencies"`
				HasInstall   bool              `json:"hasInstallScript"`
				Bin          map[string]string `json:"bin"`
				Dev          bool              `json:"dev"`
			} `json:"packages"`
		}
		if err := json.Unmarshal(v.PackageLock, &lock); err != nil {
			t.Fatalf("%s/package-lock.json: %v", name, err)
		}
		if lock.LockfileVersion < 2 {
			t.Errorf("%s: lockfileVersion %d, want 2 or 3", name, lock.LockfileVersion)
		}
		if !maps.Equal(lock.Packages[""].Dependencies, v.Packages) {
			t.Errorf("%s: package-lock.json root dependencies %v, Packages %v (run npm install --package-lock-only)", name, lock.Packages[""].Dependencies, v.Packages)
		}
		for pkg, version := range v.Packages {
			if !exactVersion.MatchString(version) {
				t.Errorf("%s: %s pinned as %q, want an exact version", name, pkg, version)
			}
			if got := lock.Packages["node_modules/"+pkg].Version; got != version {
				t.Errorf("%s: lock has %s@%s, pinned %s", name, pkg, got, version)
			}
		}
		for p, e := range lock.Packages {
			if p == "" {
				continue
			}
			if e.Integrity == "" {
				t.Errorf("%s: %s has no integrity hash in the lock", name, p)
			}
			// Neither should matter (scripts are not run and bin links
			// are dropped), but a new one deserves a look.
			if e.HasInstall {
				t.Errorf("%s: %s has an install script", name, p)
			}
			for cmd := range e.Bin {
				if !reviewedBins[cmd] {
					t.Errorf("%s: %s has bin entry %s: look at it, then add it to reviewedBins", name, p, cmd)
				}
			}
		}
		if _, err := Get(name); err != nil {
			t.Error(err)
		}
	}
	if _, err := Get("nope"); err == nil {
		t.Error("Get of an unknown variant succeeded")
	}
}
