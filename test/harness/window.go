package harness

import (
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/config"
)

// OneDedupWindow waits, when less than need is left of the current
// default dedup window, for the next one to begin. The windows nodes
// claim in a shared S3 store are aligned on multiples of their length
// since the Unix epoch, as every node aligns them, so two crashes of one
// bug that straddle a boundary are two windows by design (two cores
// kept): a test of cluster-wide dedup whose crashes must share one
// window, and takes up to need, calls this before its first crash. (A
// node's own window runs from its first crash and needs no wait.)
func OneDedupWindow(t testing.TB, need time.Duration) {
	t.Helper()
	w := time.Duration(config.Default().Dedup.Window)
	if w <= 0 {
		return
	}
	now := time.Now()
	if left := now.Truncate(w).Add(w).Sub(now); left < need {
		t.Logf("waiting %s for the next dedup window (%s aligned), so that this test's crashes share one", left.Round(time.Second), w)
		time.Sleep(left + 100*time.Millisecond)
	}
}
