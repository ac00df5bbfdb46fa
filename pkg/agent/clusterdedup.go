package agent

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
)

// clusterDedupProbe finds out whether deduplication can span the cluster
// (an S3 store whose service refuses a second conditional create) and
// tells the helpers through spool.ClusterMarker.
func clusterDedupProbe(ctx context.Context, cfg *config.Config, st store.Store, log *zap.Logger) bool {
	marker := spool.Open(cfg.Spool).ClusterMarker()
	s3, ok := st.(*store.S3)
	if !ok || cfg.Dedup.Window <= 0 {
		marker.Clear()
		return false
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s3.ProbeClaims(pctx); err != nil {
		marker.Clear()
		log.Warn("deduplication stays node-local: each node keeps one core per bug", zap.String("store", st.String()), zap.Error(err))
		return false
	}
	if err := marker.Set(st.String()); err != nil {
		log.Warn("deduplication stays node-local", zap.Error(err))
		return false
	}
	log.Info("deduplication is cluster-wide: one core per bug across the nodes sharing the store", zap.String("store", st.String()))
	return true
}
