package cli

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/corecatch/corecatch/pkg/agent"
	"github.com/corecatch/corecatch/pkg/debuginfod"
)

func newDebuginfod(g *globals) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "debuginfod [--listen ADDR]",
		Short: "Serve the store's executables and libraries by build-id to debuggers (debuginfod protocol)",
		Long: `debuginfod answers GET /buildid/<id>/executable and /buildid/<id>/debuginfo
(404 when no bundle holds the build-id, or the file has no DWARF) from the
store's bundles, so that any debugger fetches the exact files a crashed
process had mapped:
  DEBUGINFOD_URLS=http://ADDR gdb ...   or   debuginfod-find executable <id>`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, st, err := g.openStore(cmd)
			if err != nil {
				return err
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w (pass another --listen)", listen, err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "serving %s by build-id on http://%s\n", st, l.Addr())
			// The bounds of every server of corecatch's, but a file of
			// up to collect.max_file_bytes gets minutes to go out.
			srv := agent.NewServer("", &debuginfod.Server{Store: st, MaxBytes: c.Collect.MaxFileBytes.Bytes, TempDir: os.TempDir()})
			srv.WriteTimeout = 10 * time.Minute
			go func() {
				<-cmd.Context().Done()
				srv.Close()
			}()
			if err := srv.Serve(l); err != nil && err != http.ErrServerClosed {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8002", "address to serve on")
	return cmd
}
