package agent

import (
	"context"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/collector"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/metrics"
	"github.com/corecatch/corecatch/pkg/store"
)

// retention returns how the agent applies retention to st and how long to
// wait between two runs: to a local store every interval; to an S3 store,
// which every node of a cluster sweeps, bundles older than max_age about
// every retention.sweep_interval, each wait drawn between half and one
// and a half of it so that nodes spread out. It returns nil when nothing
// is to be done.
func retention(cfg *config.Config, st store.Store, interval time.Duration) (func(context.Context) ([]string, error), func() time.Duration) {
	switch s := st.(type) {
	case *store.File:
		return func(ctx context.Context) ([]string, error) {
			return s.Vacuum(ctx, collector.RetentionFor(cfg.Retention, s), "")
		}, func() time.Duration { return interval }
	case *store.S3:
		age, every := time.Duration(cfg.Retention.MaxAge), time.Duration(cfg.Retention.SweepInterval)
		if age <= 0 || every <= 0 {
			return nil, nil
		}
		return func(ctx context.Context) ([]string, error) {
			return s.Sweep(ctx, age)
		}, func() time.Duration { return every/2 + rand.N(every) }
	}
	return nil, nil
}

// retainLoop runs retain, then waits every(), until ctx ends: age-based
// retention must run on nodes that stop crashing too. Each deletion and
// failure is counted in met.
func retainLoop(ctx context.Context, retain func(context.Context) ([]string, error), every func() time.Duration, met *metrics.Metrics, log *zap.Logger) {
	for {
		gone, err := retain(ctx)
		for range gone {
			met.StoreOp("delete", nil)
		}
		if err != nil {
			met.StoreOp("delete", err)
			log.Warn("retention", zap.Error(err))
		} else if len(gone) > 0 {
			log.Info("retention deleted bundles", zap.Strings("ids", gone))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every()):
		}
	}
}

// compactEvery is about how often each agent folds the settled hours of
// an S3 store's index into segments; each wait is drawn between half and
// one and a half of it, so that a cluster's agents spread out, and the
// first agent to come by after an hour settled does the work for all.
const compactEvery = 30 * time.Minute

// compactIndex keeps an S3 store's index compact until ctx ends.
func compactIndex(ctx context.Context, s *store.S3, met *metrics.Metrics, log *zap.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(compactEvery/2 + rand.N(compactEvery)):
		}
		n, err := s.CompactIndex(ctx, time.Now())
		met.StoreOp("compact", err)
		if err != nil {
			log.Warn("compact the store's index", zap.Error(err))
		} else if n > 0 {
			log.Info("compacted the store's index", zap.Int("segments", n))
		}
	}
}
