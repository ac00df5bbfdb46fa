package agent

import (
	"context"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/store"
)

// TestRetentionSchedule checks how often each store is swept: a local
// store every --retention-interval; an S3 store, which all nodes sweep,
// about every retention.sweep_interval with waits spread between half and
// one and a half of it, and not at all without max_age or the interval.
func TestRetentionSchedule(t *testing.T) {
	cfg := config.Default()
	retain, every := retention(cfg, store.NewFile(t.TempDir()), 7*time.Second)
	if retain == nil {
		t.Fatal("no retention for a local store")
	}
	if got := every(); got != 7*time.Second {
		t.Errorf("local store swept every %v, want the interval 7s", got)
	}
	if gone, err := retain(context.Background()); err != nil || len(gone) != 0 {
		t.Errorf("retention of an empty store deleted %v: %v", gone, err)
	}

	s3 := &store.S3{}
	cfg.Retention.MaxAge, cfg.Retention.SweepInterval = config.Duration(time.Hour), config.Duration(10*time.Minute)
	retain, every = retention(cfg, s3, 7*time.Second)
	if retain == nil {
		t.Fatal("no sweep of an S3 store with max_age and sweep_interval")
	}
	var lo, hi time.Duration = time.Hour, 0
	for range 1000 {
		d := every()
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 5*time.Minute || hi >= 15*time.Minute {
		t.Errorf("waits between S3 sweeps in [%v, %v], want within [5m, 15m)", lo, hi)
	}
	if hi-lo < 5*time.Minute {
		t.Errorf("waits between S3 sweeps in [%v, %v]: not spread out, the nodes would sweep together", lo, hi)
	}
	for _, c := range []struct{ age, every time.Duration }{{0, time.Minute}, {time.Hour, 0}} {
		cfg.Retention.MaxAge, cfg.Retention.SweepInterval = config.Duration(c.age), config.Duration(c.every)
		if retain, _ := retention(cfg, s3, time.Second); retain != nil {
			t.Errorf("an S3 store swept with max_age %v and sweep_interval %v", c.age, c.every)
		}
	}
}
