package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/corecatch/corecatch/pkg/agent"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/sysctl"
)

func newInstall(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "install",
		Short: "Make the kernel hand every core dump to corecatch",
		Long: `install sets kernel.core_pattern to run this binary's collect command (or
its copy in host.bin_dir, replaced atomically), raises kernel.core_pipe_limit
when it is 0 (so the kernel keeps the crashed process until its files are
captured), and saves the previous values in the spool for uninstall. It
snapshots the effective config (file plus flags) into the spool: re-run
install after changing the config. Running it again is safe.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := mustRoot("install"); err != nil {
				return err
			}
			cfg, err := g.load(cmd)
			if err != nil {
				return err
			}
			res, err := agent.Install(cfg, false)
			if err != nil {
				return err
			}
			printInstall(cmd.OutOrStdout(), res)
			fmt.Fprintf(cmd.OutOrStdout(), "intake: pipe (the kernel runs the helper for each crash; the agent takes cores over %s when it runs)\n", cfg.CoredumpSocket)
			return nil
		},
	}
}

func printInstall(w io.Writer, res sysctl.Result) {
	if res.AlreadyInstalled {
		fmt.Fprintf(w, "corecatch was already installed; core_pattern refreshed.\n")
	} else {
		fmt.Fprintf(w, "replaced kernel.core_pattern: %s\n", res.PreviousPattern)
	}
	fmt.Fprintf(w, "kernel.core_pattern = %s\n", res.Pattern)
	if res.PipeLimit != res.PreviousLimit {
		fmt.Fprintf(w, "kernel.core_pipe_limit = %s (was %s)\n", res.PipeLimit, res.PreviousLimit)
	} else {
		fmt.Fprintf(w, "kernel.core_pipe_limit = %s (unchanged)\n", res.PipeLimit)
	}
}

func newUninstall(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "uninstall",
		Short: "Restore the core_pattern and core_pipe_limit that install replaced, and remove its copy in host.bin_dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := mustRoot("uninstall"); err != nil {
				return err
			}
			cfg, err := g.load(cmd)
			if err != nil {
				return err
			}
			res, err := agent.Uninstall(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored kernel.core_pattern = %s\nrestored kernel.core_pipe_limit = %s\n", res.Pattern, res.PipeLimit)
			return nil
		},
	}
}

func newAgent(g *globals) *cobra.Command {
	var listen string
	var interval time.Duration
	var freezeAllow, freezeDeny []string
	var nf notifyFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node daemon: install the helper, report bundles, restore on exit",
		Long: `agent installs corecatch as the core dump handler, runs the eBPF observer,
answers the pipe helper on its unix socket (--socket), logs every bundle the
helper reports (also those reported while it was down), and applies retention
to a local store. On SIGTERM or SIGINT it restores the core_pattern it
replaced. It serves Prometheus metrics on /metrics, and /healthz and
/readyz, on --listen. It sends each crash to the Feishu bots of
notify.feishu and to Alertmanager (notify.alertmanager). With
notify.bridge.listen set it also turns Alertmanager's webhook, POSTed to
` + agent.BridgePath + ` on that address with the bearer token of
notify.bridge.token_file, into Feishu cards.

The bot's URL and secret: --feishu-webhook-file and --feishu-secret-file,
or $` + envWebhook + ` and $` + envSecret + ` (--feishu-webhook and
--feishu-secret show them to every user of the node in ps).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := mustRoot("agent"); err != nil {
				return err
			}
			nsErr := agent.JoinHostCgroupNamespace()
			cfg, log, err := g.daemon(cmd, func(cfg *config.Config) {
				cfg.Freeze.Allow = append(cfg.Freeze.Allow, freezeAllow...)
				cfg.Freeze.Deny = append(cfg.Freeze.Deny, freezeDeny...)
				nf.apply(cfg)
			})
			if err != nil {
				return err
			}
			defer log.Sync()
			if nsErr != nil {
				log.Error("not in the host's cgroup namespace: containers will be neither frozen nor named", zap.Error(nsErr))
			}
			return agent.Run(cmd.Context(), agent.Daemon{
				Config: cfg, Log: log, Listen: listen, RetentionInterval: interval, Version: Version,
			})
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":9977", "address for /metrics, /healthz and /readyz")
	cmd.Flags().StringArrayVar(&freezeAllow, "freeze-allow", nil, "regular expression over cgroup paths that may be frozen, added to freeze.allow (repeatable)")
	cmd.Flags().StringArrayVar(&freezeDeny, "freeze-deny", nil, "regular expression over cgroup paths never to freeze, added to freeze.deny (repeatable)")
	cmd.Flags().DurationVar(&interval, "retention-interval", time.Minute, "how often to apply retention to a local store")
	nf.add(cmd.Flags(), true)
	return cmd
}

// daemon loads the config of a long-running command, lets adjust lay its
// flags over it, validates it and makes the daemon's JSON logger.
func (g *globals) daemon(cmd *cobra.Command, adjust func(*config.Config)) (*config.Config, *zap.Logger, error) {
	cfg, err := g.load(cmd)
	if err != nil {
		return nil, nil, err
	}
	adjust(cfg)
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	zc := zap.NewProductionConfig()
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	log, err := zc.Build()
	return cfg, log, err
}
