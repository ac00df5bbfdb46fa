package agent

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
)

// TestClusterDedupProbeClearsMarker: the marker a previous agent left
// (the helpers read it as "claim each bug in the store") goes away when
// the store can no longer enforce claims: a local store now, or
// deduplication off. The S3 service's answer is tested in
// test/e2e (TestS3ClusterDedup, a real S3 service).
func TestClusterDedupProbeClearsMarker(t *testing.T) {
	for _, tc := range []struct {
		name   string
		st     store.Store
		window time.Duration
	}{
		{"local store", store.NewFile(t.TempDir()), time.Hour},
		{"dedup off", &store.S3{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Spool = t.TempDir()
			cfg.Dedup.Window = config.Duration(tc.window)
			if err := spool.Open(cfg.Spool).ClusterMarker().Set("s3://old"); err != nil {
				t.Fatal(err)
			}
			if !spool.Open(cfg.Spool).ClusterMarker().IsSet() {
				t.Fatal("the marker was not set")
			}
			if clusterDedupProbe(context.Background(), cfg, tc.st, zap.NewNop()) {
				t.Error("the probe says cluster-wide")
			}
			if spool.Open(cfg.Spool).ClusterMarker().IsSet() {
				t.Error("the marker is still there: the helpers would claim bugs in a store that does not enforce it")
			}
		})
	}
}
