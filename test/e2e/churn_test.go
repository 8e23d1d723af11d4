package e2e

import (
	"fmt"
	"sync"
	"testing"
)

func TestFiftyInARowAndTenInParallelLeaveNothing(t *testing.T) {
	e := startExecutor(t, executorOpts{slots: 10, queue: 0})
	for i := range 50 {
		r := e.mustRun(t, code(fmt.Sprintf(`console.log(%d)`, i)))
		if string(r.stdout) != fmt.Sprintf("%d\n", i) {
			t.Fatalf("run %d printed %q", i, r.stdout)
		}
	}
	requireNoLeftovers(t, stateDir, "")

	var wg sync.WaitGroup
	runs := make([]*run, 10)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i] = e.execute(t.Context(), code(fmt.Sprintf(`setTimeout(() => console.log(%d), 200)`, i)))
		}()
	}
	wg.Wait()
	for i, r := range runs {
		if r.err != nil || string(r.stdout) != fmt.Sprintf("%d\n", i) {
			t.Errorf("parallel run %d: %v, stdout %q", i, r.err, r.stdout)
		}
	}
	requireNoLeftovers(t, stateDir, "")
}
