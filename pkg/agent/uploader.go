package agent

import (
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/pkg/upload"
)

// NewUploader returns what uploads the outbox into st, with o's hooks, or
// nil when nothing is uploaded (a local store, or upload.direct): the
// agent's worker runs it, `corecatch upload` drains it once for a node
// whose agent is down.
func NewUploader(cfg *config.Config, st store.Store, log *zap.Logger, o upload.Options) *upload.Uploader {
	remote, ok := st.(*store.S3)
	local, _ := store.ForNode(cfg, st)
	outbox, spooled := local.(*store.File)
	if !ok || !spooled {
		return nil
	}
	o.Outbox, o.Remote, o.Log, o.MaxBackoff = outbox, remote, log, time.Duration(cfg.Upload.MaxBackoff)
	o.QuarantineAfter = cfg.Upload.QuarantineAfter
	return upload.New(o)
}
