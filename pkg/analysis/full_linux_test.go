package analysis

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/store"
)

// TestCompleteGivesUp: each start of the full unwind is recorded before it
// runs, and a bundle whose analysis was started maxAttempts times without
// finishing (the agent died in it) is given up, pending cleared and the
// reason recorded, instead of being retried at every start of the agent.
func TestCompleteGivesUp(t *testing.T) {
	ctx := context.Background()
	st := store.NewFile(t.TempDir())
	cfg := config.Default().Analysis
	for _, tc := range []struct {
		before int
		reason string
	}{
		{0, "no executable in the bundle"}, // it ran, and failed for its own reason
		{maxAttempts, "started 3 times and never finished"},
	} {
		id := bundle.NewID(time.Now(), []byte("loop"))
		w, err := st.Put(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		m := &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: time.Now(), Comm: "loop",
			Analysis: &bundle.Analysis{Unwinder: "frame-pointers", Pending: true, Attempts: tc.before}}
		if err := w.Commit(ctx, m); err != nil {
			t.Fatal(err)
		}
		if _, err := Complete(ctx, cfg, st, m, t.TempDir()); err == nil || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("%d attempts before: Complete = %v, want %q", tc.before, err, tc.reason)
		}
		got, err := st.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if a := got.Analysis; a == nil || a.Pending || a.Attempts != tc.before+1 || !strings.Contains(a.Reason, tc.reason) {
			t.Errorf("%d attempts before: stored analysis %+v, want attempt %d recorded, not pending, reason %q", tc.before, a, tc.before+1, tc.reason)
		}
	}
}
