package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// Swept counts what Sweep removed.
type Swept struct {
	Containers, Tasks, Snapshots, CodeDirs int
}

// Sweep removes what a previous executor left in its namespace and state
// dir: running tasks (all their processes killed), containers, snapshots
// and code directories. Call it before serving; it assumes no execution of
// this process runs.
func (r *Runtime) Sweep(ctx context.Context) (Swept, error) {
	ctx = r.ns(ctx)
	var s Swept
	var errs []error

	cs, err := r.client.Containers(ctx, managedFilter)
	if err != nil {
		return s, fmt.Errorf("list containers: %w", err)
	}
	for _, c := range cs {
		if task, err := c.Task(ctx, nil); err == nil {
			kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := task.Kill(kctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
				errs = append(errs, fmt.Errorf("kill task %s: %w", c.ID(), err))
			}
			if _, err := task.Delete(kctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete task %s: %w", c.ID(), err))
			} else {
				s.Tasks++
			}
			cancel()
		} else if !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("load task %s: %w", c.ID(), err))
		}
		if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete container %s: %w", c.ID(), err))
			continue
		}
		s.Containers++
	}

	sn := r.client.SnapshotService(r.cfg.Snapshotter)
	var keys []string
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		keys = append(keys, info.Name)
		return nil
	}, managedFilter); err != nil {
		errs = append(errs, fmt.Errorf("list snapshots: %w", err))
	}
	for _, k := range keys {
		if err := sn.Remove(ctx, k); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove snapshot %s: %w", k, err))
			continue
		}
		s.Snapshots++
	}

	dir := filepath.Join(r.cfg.StateDir, "executions")
	entries, err := os.ReadDir(dir)
	if err != nil {
		errs = append(errs, fmt.Errorf("list code dirs: %w", err))
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("remove code dir: %w", err))
			continue
		}
		s.CodeDirs++
	}
	return s, errors.Join(errs...)
}
