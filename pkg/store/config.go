package store

import (
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"
)

// FromConfig opens the store the config names, as the agent, the pipe
// helper, install (which checks it before pointing the kernel at it) and
// the SRE's commands all do.
func FromConfig(c *config.Config) (Store, error) {
	return Open(c.Store, Options{S3: S3OptionsFrom(c)})
}

// S3OptionsFrom are the config's S3 settings, so that every command opens
// an s3:// store the same way (the SRE's commands add the cluster's keys).
func S3OptionsFrom(c *config.Config) S3Options {
	return S3Options{
		Endpoint: c.S3.Endpoint, Region: c.S3.Region, PathStyle: c.S3.PathStyle,
		CredentialsFile: c.S3.CredentialsFile, STS: c.S3.STS,
	}
}

// ForNode returns where bundles are written on this node, by the helper
// and by the agent's crashes without a core, and the bounds that apply
// there: st itself, or for an S3 store the outbox in the spool (unless
// upload.direct), whose bundles the agent uploads.
func ForNode(c *config.Config, st Store) (Store, config.Retention) {
	if _, remote := st.(*S3); remote && !c.Upload.Direct {
		return NewFile(spool.Open(c.Spool).Outbox()),
			config.Retention{MaxUse: c.Upload.SpoolMaxUse, KeepFree: c.Upload.SpoolKeepFree}
	}
	return st, c.Retention
}
