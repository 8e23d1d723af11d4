package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
// and code directories. Call it before serving.
func (r *Runtime) Sweep(ctx context.Context) (Swept, error) {
	return r.sweep(ctx, r.isLive)
}

// Reap removes what executions of this process left behind because a
// cleanup failed (containerd was gone, say), sparing the executions still
// running. It does nothing when no cleanup failed since the last Reap.
func (r *Runtime) Reap(ctx context.Context) (Swept, error) {
	r.mu.Lock()
	dirty := r.dirty
	r.dirty = false
	r.mu.Unlock()
	if !dirty {
		return Swept{}, nil
	}
	s, err := r.sweep(ctx, r.isLive)
	if err != nil {
		r.metrics.CleanupFailures.WithLabelValues("reap").Inc()
		r.mu.Lock()
		r.dirty = true
		r.mu.Unlock()
	}
	return s, err
}

func (r *Runtime) isLive(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.live[id]
}

func (r *Runtime) sweep(ctx context.Context, live func(id string) bool) (Swept, error) {
	ctx = r.ns(ctx)
	var s Swept
	var errs []error

	cs, err := r.client.Containers(ctx, managedFilter)
	if err != nil {
		return s, fmt.Errorf("list containers: %w", err)
	}
	for _, c := range cs {
		if live(c.ID()) {
			continue
		}
		if task, err := c.Task(ctx, nil); err == nil {
			kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := r.deleteTask(kctx, task); err != nil && !errdefs.IsNotFound(err) {
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
		if live(k) {
			continue
		}
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
		if live(e.Name()) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("remove code dir: %w", err))
			continue
		}
		s.CodeDirs++
	}
	return s, errors.Join(errs...)
}
