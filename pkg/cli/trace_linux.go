package cli

import (
	"encoding/json"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/corecatch/corecatch/pkg/agent"
	"github.com/corecatch/corecatch/pkg/observer"
)

func newTrace(g *globals) *cobra.Command {
	var asJSON bool
	var mode string
	cmd := &cobra.Command{
		Use:   "trace",
		Short: "Print every process-fatal signal on this node as it happens",
		Long: `trace loads corecatch's eBPF observer and prints one line per process-fatal
signal (kind core or fatal), as the kernel delivers it, and one (kind exit)
when that process is gone, with the outcome: core_dumped, core_missing or
killed. With --json each line is a JSON object. Ctrl-C stops it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := mustRoot("trace"); err != nil {
				return err
			}
			cfg, err := g.load(cmd)
			if err != nil {
				return err
			}
			opts, err := agent.ObserverOptions(cfg)
			if err != nil {
				return err
			}
			opts.Mode = observer.Mode(mode)
			ob, err := observer.Load(opts)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				ob.Close()
			}()
			errw := cmd.ErrOrStderr()
			fmt.Fprintf(errw, "tracing fatal signals (%s program); Ctrl-C to stop\n", ob.Mode())
			out := json.NewEncoder(cmd.OutOrStdout())
			for ev := range ob.Events() {
				if asJSON {
					if err := out.Encode(ev); err != nil {
						return err
					}
				} else {
					fmt.Fprintln(cmd.OutOrStdout(), ev)
				}
			}
			st := ob.Stats()
			fmt.Fprintf(errw, "events lost in the kernel: %d, dropped by the reader: %d\n", st.Lost, st.Dropped)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line")
	cmd.Flags().StringVar(&mode, "mode", "", "observer program: tp_btf or tracepoint (default: tp_btf when the kernel has BTF)")
	return cmd
}
