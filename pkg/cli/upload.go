package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/pkg/upload"
)

// newUploader returns what uploads the outbox into st, with o's hooks, or
// nil when nothing is uploaded (a local store, or upload.direct).
func newUploader(cfg *config.Config, st store.Store, log *zap.Logger, o upload.Options) *upload.Uploader {
	remote, ok := st.(*store.S3)
	local, _ := nodeStore(cfg, st)
	outbox, spooled := local.(*store.File)
	if !ok || !spooled {
		return nil
	}
	o.Outbox, o.Remote, o.Log, o.MaxBackoff = outbox, remote, log, time.Duration(cfg.Upload.MaxBackoff)
	o.QuarantineAfter = cfg.Upload.QuarantineAfter
	return upload.New(o)
}

func newUpload(g *globals) *cobra.Command {
	var retry bool
	cmd := &cobra.Command{
		Use:   "upload",
		Short: "Upload the bundles waiting in the outbox now, once",
		Long: `upload sends every bundle waiting in the spool's outbox to the S3 store,
verified, and deletes the local copies, as the agent does by itself; for a
node whose agent is down. It stops at the first failure of the store; a
bundle the store refuses for good is passed over, and set aside after
upload.quarantine_after such failures (--retry-quarantined tries those
again).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, st, err := g.openStore(cmd)
			if err != nil {
				return err
			}
			up := newUploader(cfg, st, zap.NewNop(), upload.Options{RetryQuarantined: retry})
			if up == nil {
				return fmt.Errorf("%s is not an S3 store uploaded through the outbox: nothing to upload", st)
			}
			n, err := up.Drain(cmd.Context())
			fmt.Fprintf(cmd.OutOrStdout(), "uploaded %d bundles to %s\n", n, st)
			return err
		},
	}
	cmd.Flags().BoolVar(&retry, "retry-quarantined", false, "also try the bundles set aside after permanent failures (metadata upload.quarantined)")
	return cmd
}
