package agent

import (
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/pkg/upload"
)

// OpenStore opens the store the config names, as the agent, its helper
// and install (which checks it before pointing the kernel at it) all do.
func OpenStore(c *config.Config) (store.Store, error) {
	return store.Open(c.Store, store.Options{S3: S3Options(c)})
}

// S3Options are the config's S3 settings, so that every command opens an
// s3:// store the same way (the SRE's commands add the cluster's keys).
func S3Options(c *config.Config) store.S3Options {
	return store.S3Options{
		Endpoint: c.S3.Endpoint, Region: c.S3.Region, PathStyle: c.S3.PathStyle,
		CredentialsFile: c.S3.CredentialsFile, STS: c.S3.STS,
	}
}

// NodeStore returns where bundles are written on this node, by the helper
// and by the agent's crashes without a core, and the bounds that apply
// there: st itself, or for an S3 store the outbox in the spool (unless
// upload.direct), whose bundles the agent uploads.
func NodeStore(c *config.Config, st store.Store) (store.Store, config.Retention) {
	if _, remote := st.(*store.S3); remote && !c.Upload.Direct {
		return store.NewFile(spool.Open(c.Spool).Outbox()),
			config.Retention{MaxUse: c.Upload.SpoolMaxUse, KeepFree: c.Upload.SpoolKeepFree}
	}
	return st, c.Retention
}

// NewUploader returns what uploads the outbox into st, with o's hooks, or
// nil when nothing is uploaded (a local store, or upload.direct): the
// agent's worker runs it, `corecatch upload` drains it once for a node
// whose agent is down.
func NewUploader(cfg *config.Config, st store.Store, log *zap.Logger, o upload.Options) *upload.Uploader {
	remote, ok := st.(*store.S3)
	local, _ := NodeStore(cfg, st)
	outbox, spooled := local.(*store.File)
	if !ok || !spooled {
		return nil
	}
	o.Outbox, o.Remote, o.Log, o.MaxBackoff = outbox, remote, log, time.Duration(cfg.Upload.MaxBackoff)
	o.QuarantineAfter = cfg.Upload.QuarantineAfter
	return upload.New(o)
}
