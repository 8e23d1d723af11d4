// Command sandpit-executor serves sandpit.executor.v1.ExecutorService: it
// runs untrusted Node.js code in fresh, hardened containerd sandboxes.
package main

import (
	"context"
	"log/slog"

	"github.com/sandpit-run/sandpit/services/daemon/program"
	"github.com/sandpit-run/sandpit/services/executor/app"
	"github.com/sandpit-run/sandpit/services/executor/internal/config"
)

func main() {
	program.Main("sandpit-executor", func(args []string, getenv func(string) string) (config.Config, string, error) {
		cfg, err := config.Parse(args, getenv)
		return cfg, cfg.LogLevel, err
	}, func(ctx context.Context, cfg config.Config, log *slog.Logger) error {
		a, err := app.New(ctx, cfg, log)
		if err != nil {
			return err
		}
		return a.Run(ctx)
	})
}
