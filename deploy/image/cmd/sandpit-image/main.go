// Command sandpit-image builds the default sandbox image (Node.js, the
// shared libraries it links, CA certificates, an unprivileged user; nothing
// else) from pinned inputs, reproducibly, as an OCI layout tar for
// `ctr images import`. It prints the manifest digest on stdout.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/sandpit-run/sandpit/deploy/image/internal/build"
	"github.com/sandpit-run/sandpit/deploy/image/internal/inputs"
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
	out := flag.String("out", "build/sandpit-node.tar", "OCI layout tar to write")
	cache := flag.String("cache", defaultCache, "directory for downloaded inputs (reused when checksums match)")
	name := flag.String("name", build.DefaultName, "image name recorded for containerd import")
	epoch := flag.Int64("source-date-epoch", defaultEpoch, "creation time and file mtime, in Unix seconds (default $SOURCE_DATE_EPOCH or 0)")
	verbose := flag.Bool("v", false, "log progress to stderr")
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	digest, err := build.Run(ctx, build.Options{
		Out:      *out,
		CacheDir: *cache,
		Name:     *name,
		Created:  time.Unix(*epoch, 0).UTC(),
		Log:      log,
	})
	if err != nil {
		return err
	}
	fmt.Println(digest.String())
	return nil
}
