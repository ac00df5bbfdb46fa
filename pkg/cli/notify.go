package cli

import (
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/metrics"
	"github.com/corecatch/corecatch/pkg/notify"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
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

// newNotifier opens the notification queues in the spool and counts their
// outcomes in met.
func newNotifier(cfg *config.Config, st store.Store, met *metrics.Metrics, log *zap.Logger) (*notify.Notifier, error) {
	n, err := notify.New(cfg.Notify, spool.Open(cfg.Spool), notify.Options{Log: log, Version: Version, Result: met.Notification,
		Download: downloadURL(cfg, st), Pods: cfg.Pods})
	if err != nil {
		return nil, err
	}
	met.Notifier(n.Sinks(), notify.Results, n.Pending)
	return n, nil
}

// downloadURL gives cards their download button: a presigned link to the
// core, valid notify.link_expiry, when the store can make one; else
// notify.download_url with the bundle id filled in.
func downloadURL(cfg *config.Config, st store.Store) func(context.Context, string) string {
	return func(ctx context.Context, id string) string {
		if p, ok := st.(store.Presigner); ok {
			if u, err := p.PresignGet(ctx, id, bundle.CoreFile, time.Duration(cfg.Notify.LinkExpiry)); err == nil {
				return u
			}
		}
		if cfg.Notify.DownloadURL == "" {
			return ""
		}
		return strings.ReplaceAll(cfg.Notify.DownloadURL, "{id}", id)
	}
}

// bridgePath is where Alertmanager's webhook reaches the Feishu bridge.
const bridgePath = "/alertmanager/feishu"

func newFeishuBridge(g *globals) *cobra.Command {
	var listen, tokenFile string
	var nf notifyFlags
	cmd := &cobra.Command{
		Use:   "feishu-bridge",
		Short: "Turn Alertmanager's webhook into signed Feishu cards, for a central deployment",
		Long: `feishu-bridge serves ` + bridgePath + ` (point an Alertmanager webhook_config at
http://HOST` + ":9978" + bridgePath + `, optionally ?bot=NAME) and sends each alert group
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
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			met := metrics.New(Version, nil)
			n, err := newNotifier(cfg, nil, met, log)
			if err != nil {
				return err
			}
			bridge, err := n.Bridge()
			if err != nil {
				return err
			}
			mux := newMux(met, func() bool { return true })
			mux.Handle(bridgePath, bridge)
			srv := serveHTTP(listen, mux, log)
			defer srv.Close()
			log.Info("feishu bridge listening", zap.String("listen", listen), zap.Strings("sinks", n.Sinks()))
			n.Run(ctx)
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":9978", "address for "+bridgePath+", /metrics and /healthz; default notify.bridge.listen, else :9978")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token Alertmanager sends; sets notify.bridge.token_file")
	nf.add(cmd.Flags(), false)
	return cmd
}

// agentBridge serves the agent's bridge on notify.bridge.listen, apart
// from the metrics port that every scraper reaches; nil when it is off.
func agentBridge(cfg *config.Config, n *notify.Notifier, log *zap.Logger) (*http.Server, error) {
	if cfg.Notify.Bridge.Listen == "" {
		return nil, nil
	}
	bridge, err := n.Bridge()
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle(bridgePath, bridge)
	log.Info("feishu bridge listening", zap.String("listen", cfg.Notify.Bridge.Listen))
	return serveHTTP(cfg.Notify.Bridge.Listen, mux, log), nil
}

// newMux serves /metrics, /healthz and /readyz (ready says whether the
// process is ready).
func newMux(met *metrics.Metrics, ready func() bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(met.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready: the helper socket is not listening yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	return mux
}

// Bounds of every HTTP server the agent and the bridge run: a peer that
// trickles its headers or body, or holds a connection idle, is cut off
// instead of holding a goroutine and a socket for ever.
const (
	httpReadHeaderTimeout = 5 * time.Second
	httpReadTimeout       = 15 * time.Second
	httpWriteTimeout      = 30 * time.Second
	httpIdleTimeout       = 60 * time.Second
	httpMaxHeaderBytes    = 16 << 10
)

// serveHTTP serves mux on listen in the background; a failure to listen is
// logged, since the agent's main job goes on without its endpoint.
func serveHTTP(listen string, mux http.Handler, log *zap.Logger) *http.Server {
	srv := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: httpReadHeaderTimeout, ReadTimeout: httpReadTimeout,
		WriteTimeout: httpWriteTimeout, IdleTimeout: httpIdleTimeout, MaxHeaderBytes: httpMaxHeaderBytes}
	go func() {
		if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			log.Error("serve HTTP", zap.String("listen", listen), zap.Error(err))
		}
	}()
	return srv
}
