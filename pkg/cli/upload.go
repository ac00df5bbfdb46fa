package cli

import (
	"fmt"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/agent"
	"github.com/corecatch/corecatch/pkg/upload"
)

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
			up := agent.NewUploader(cfg, st, zap.NewNop(), upload.Options{RetryQuarantined: retry})
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
