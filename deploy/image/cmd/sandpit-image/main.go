// Command sandpit-image builds the default sandbox image (Node.js, the
// shared libraries it links, CA certificates, an unprivileged user; nothing
// else) from pinned inputs, reproducibly, as an OCI layout tar for
// `ctr images import`. It prints the manifest digest on stdout.
//
// --variant sdk builds the test variant sandpit.local/node-sdk:24 instead:
// the same image plus one layer of npm packages (stripe, axios) at
// /node_modules, pinned by deploy/image/variants/sdk/package-lock.json.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sandpit-run/sandpit/deploy/image/internal/build"
	"github.com/sandpit-run/sandpit/deploy/image/internal/inputs"
	"github.com/sandpit-run/sandpit/deploy/image/internal/pins"
	"github.com/sandpit-run/sandpit/deploy/image/variants"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sandpit-image:", err)
		os.Exit(1)
	}
}

func run() error {
	defaultCache, err := inputs.DefaultCacheDir()
	if err != nil {
		return err
	}
	// SOURCE_DATE_EPOCH is the reproducible-builds convention for "the time
	// this build claims"; without it the Unix epoch keeps builds identical.
	defaultEpoch := int64(0)
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if defaultEpoch, err = strconv.ParseInt(s, 10, 64); err != nil {
			return fmt.Errorf("parse SOURCE_DATE_EPOCH: %w", err)
		}
	}
	out := flag.String("out", "", "OCI layout tar to write (default build/sandpit-node.tar, or build/sandpit-node-VARIANT.tar)")
	cache := flag.String("cache", defaultCache, "directory for downloaded inputs (reused when checksums match)")
	name := flag.String("name", "", "image name recorded for containerd import (default "+build.NameFor("PROFILE", "MAJOR")+": node, or the variant's profile, and --node)")
	variant := flag.String("variant", "", "build a test variant: "+strings.Join(variants.Names(), ", ")+" (default none: the node-only image)")
	profile := flag.String("profile", "", "build an operator's profile file (YAML: name, npm directory, files) instead of a variant")
	nodeMajor := flag.String("node", pins.DefaultNodeMajor, "Node.js release line: "+strings.Join(pins.NodeMajors(), ", "))
	epoch := flag.Int64("source-date-epoch", defaultEpoch, "creation time and file mtime, in Unix seconds (default $SOURCE_DATE_EPOCH or 0)")
	verbose := flag.Bool("v", false, "log progress to stderr")
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	if *variant != "" {
		if _, err := variants.Get(*variant); err != nil {
			return err
		}
	}
	if *out == "" {
		*out = "build/sandpit-node.tar"
		if *variant != "" {
			*out = "build/sandpit-node-" + *variant + ".tar"
		}
		if *profile != "" {
			v, err := variants.LoadProfile(*profile)
			if err != nil {
				return err
			}
			*out = "build/sandpit-" + v.Name + ".tar"
		}
		if *nodeMajor != pins.DefaultNodeMajor {
			*out = strings.TrimSuffix(*out, ".tar") + "-" + *nodeMajor + ".tar"
		}
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	digest, err := build.Run(ctx, build.Options{
		Out:         *out,
		CacheDir:    *cache,
		Name:        *name,
		Variant:     *variant,
		NodeMajor:   *nodeMajor,
		ProfileFile: *profile,
		Created:     time.Unix(*epoch, 0).UTC(),
		Log:         log,
	})
	if err != nil {
		return err
	}
	fmt.Println(digest.String())
	return nil
}
