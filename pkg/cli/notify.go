package cli

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/agent"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/metrics"
)

// notifyFlags set the first Feishu bot and Alertmanager without a config
// file, as a DaemonSet's args or a quick try do. The bot's URL and secret
// also come from files or the environment: arguments show in ps to every
// user of the node, a process's environment only to its own user and root.
type notifyFlags struct {
	webhook, webhookFile, secret, secretFile, alertmanager string
}

// Environment variables for what the flags set, read when a flag is not
// given.
const (
	envWebhook     = "CORECATCH_FEISHU_WEBHOOK"
	envWebhookFile = "CORECATCH_FEISHU_WEBHOOK_FILE"
	envSecret      = "CORECATCH_FEISHU_SECRET"
	envSecretFile  = "CORECATCH_FEISHU_SECRET_FILE"
)

func (f *notifyFlags) add(fs *pflag.FlagSet, withAlertmanager bool) {
	fs.StringVar(&f.webhook, "feishu-webhook", "", "Feishu/Lark bot webhook URL; sets notify.feishu[0].webhook. Visible in ps: prefer --feishu-webhook-file or $"+envWebhook)
	fs.StringVar(&f.webhookFile, "feishu-webhook-file", "", "file holding the bot's webhook URL (a mounted Secret); sets notify.feishu[0].webhook_file (also $"+envWebhookFile+")")
	fs.StringVar(&f.secret, "feishu-secret", "", "the bot's signing secret; sets notify.feishu[0].secret. Visible in ps: prefer --feishu-secret-file or $"+envSecret)
	fs.StringVar(&f.secretFile, "feishu-secret-file", "", "file holding the bot's signing secret; sets notify.feishu[0].secret_file (also $"+envSecretFile+")")
	if withAlertmanager {
		fs.StringVar(&f.alertmanager, "alertmanager-url", "", "Alertmanager base URL to push every crash to; sets notify.alertmanager.url")
	}
}

// apply lays the flags, or else the environment, over cfg.
func (f *notifyFlags) apply(cfg *config.Config) {
	n := &cfg.Notify
	value := func(flag, file, envValue, envFile string) (string, string) {
		if flag != "" || file != "" {
			return flag, file
		}
		return os.Getenv(envValue), os.Getenv(envFile)
	}
	webhook, webhookFile := value(f.webhook, f.webhookFile, envWebhook, envWebhookFile)
	secret, secretFile := value(f.secret, f.secretFile, envSecret, envSecretFile)
	if webhook != "" || webhookFile != "" || secret != "" || secretFile != "" {
		if len(n.Feishu) == 0 {
			n.Feishu = append(n.Feishu, config.Feishu{Name: "default"})
		}
		if webhook != "" || webhookFile != "" {
			n.Feishu[0].Webhook, n.Feishu[0].WebhookFile = webhook, webhookFile
		}
		if secret != "" || secretFile != "" {
			n.Feishu[0].Secret, n.Feishu[0].SecretFile = secret, secretFile
		}
	}
	if f.alertmanager != "" {
		n.Alertmanager.URL = f.alertmanager
	}
}

func newFeishuBridge(g *globals) *cobra.Command {
	var listen, tokenFile string
	var nf notifyFlags
	cmd := &cobra.Command{
		Use:   "feishu-bridge",
		Short: "Turn Alertmanager's webhook into signed Feishu cards, for a central deployment",
		Long: `feishu-bridge serves ` + agent.BridgePath + ` (point an Alertmanager webhook_config at
http://HOST` + ":9978" + agent.BridgePath + `, optionally ?bot=NAME) and sends each alert group
as a Feishu/Lark card to the bots of notify.feishu that take alerts, firing
and resolved groups looking different. It answers only requests bearing the
token of --token-file (notify.bridge.token_file) as "Authorization: Bearer",
which Alertmanager sends with http_config.authorization.credentials_file.
Cards wait in a queue in the spool while Feishu is down or rate-limiting.
The agent serves the same endpoint when notify.bridge.listen is set; this
command is for a cluster-wide Alertmanager. It also serves /metrics and
/healthz.

The bot's URL and secret: --feishu-webhook-file and --feishu-secret-file,
or $` + envWebhook + ` and $` + envSecret + ` (--feishu-webhook and
--feishu-secret show them to every user of the machine in ps).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := g.daemon(cmd, func(cfg *config.Config) {
				nf.apply(cfg)
				cfg.Notify.Alertmanager.URL = "" // a bridge pushes nothing back
				if tokenFile != "" {
					cfg.Notify.Bridge.TokenFile = tokenFile
				}
				if !cmd.Flags().Changed("listen") && cfg.Notify.Bridge.Listen != "" {
					listen = cfg.Notify.Bridge.Listen
				}
			})
			if err != nil {
				return err
			}
			defer log.Sync()
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			met := metrics.New(Version, nil)
			n, err := agent.NewNotifier(cfg, nil, met, log, Version)
			if err != nil {
				return err
			}
			bridge, err := n.Bridge()
			if err != nil {
				return err
			}
			mux := agent.NewMux(met, func() bool { return true })
			mux.Handle(agent.BridgePath, bridge)
			srv := agent.ServeHTTP(listen, mux, log)
			defer srv.Close()
			log.Info("feishu bridge listening", zap.String("listen", listen), zap.Strings("sinks", n.Sinks()))
			n.Run(ctx)
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":9978", "address for "+agent.BridgePath+", /metrics and /healthz; default notify.bridge.listen, else :9978")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token Alertmanager sends; sets notify.bridge.token_file")
	nf.add(cmd.Flags(), false)
	return cmd
}
