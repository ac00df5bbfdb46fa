package cli

import (
	"context"
	"io"
	"net/http"
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
	"github.com/corecatch/corecatch/pkg/store"
)

// notifyFlags set the first Feishu bot and Alertmanager without a config
// file, as a DaemonSet's args or a quick try do.
type notifyFlags struct {
	webhook, secret, alertmanager string
}

func (f *notifyFlags) add(fs *pflag.FlagSet, withAlertmanager bool) {
	fs.StringVar(&f.webhook, "feishu-webhook", "", "Feishu/Lark bot webhook URL; sets notify.feishu[0].webhook")
	fs.StringVar(&f.secret, "feishu-secret", "", "the bot's signing secret; sets notify.feishu[0].secret")
	if withAlertmanager {
		fs.StringVar(&f.alertmanager, "alertmanager-url", "", "Alertmanager base URL to push every crash to; sets notify.alertmanager.url")
	}
}

// apply lays the flags over cfg.
func (f *notifyFlags) apply(cfg *config.Config) {
	n := &cfg.Notify
	if f.webhook != "" || f.secret != "" {
		if len(n.Feishu) == 0 {
			n.Feishu = append(n.Feishu, config.Feishu{Name: "default"})
		}
		if f.webhook != "" {
			n.Feishu[0].Webhook, n.Feishu[0].WebhookFile = f.webhook, ""
		}
		if f.secret != "" {
			n.Feishu[0].Secret, n.Feishu[0].SecretFile = f.secret, ""
		}
	}
	if f.alertmanager != "" {
		n.Alertmanager.URL = f.alertmanager
	}
}

// newNotifier opens the notification queues in the spool and counts their
// outcomes in met.
func newNotifier(cfg *config.Config, st store.Store, met *metrics.Metrics, log *zap.Logger) (*notify.Notifier, error) {
	n, err := notify.New(cfg.Notify, cfg.Spool, notify.Options{Log: log, Version: Version, Result: met.Notification,
		Download: downloadURL(cfg, st), Pods: cfg.Pods})
	if err != nil {
		return nil, err
	}
	met.Notifier(n.Sinks(), notify.Results, n.Pending)
	return n, nil
}

// downloadURL gives cards their download button: a presigned link to the
// core, valid 7 days (the longest S3 and OBS allow), when the store can
// make one; else notify.download_url with the bundle id filled in.
func downloadURL(cfg *config.Config, st store.Store) func(context.Context, string) string {
	return func(ctx context.Context, id string) string {
		if p, ok := st.(store.Presigner); ok {
			if u, err := p.PresignGet(ctx, id, bundle.CoreFile, 7*24*time.Hour); err == nil {
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
	var listen string
	var nf notifyFlags
	cmd := &cobra.Command{
		Use:   "feishu-bridge",
		Short: "Turn Alertmanager's webhook into signed Feishu cards, for a central deployment",
		Long: `feishu-bridge serves ` + bridgePath + ` (point an Alertmanager webhook_config at
http://HOST` + ":9978" + bridgePath + `, optionally ?bot=NAME) and sends each alert group
as a Feishu/Lark card to the bots of notify.feishu, firing and resolved
groups looking different. Cards wait in a queue in the spool while Feishu
is down or rate-limiting. The agent serves the same endpoint on its own
--listen address; this command is for a cluster-wide Alertmanager.
It also serves /metrics and /healthz.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := g.daemon(cmd, func(cfg *config.Config) {
				nf.apply(cfg)
				cfg.Notify.Alertmanager.URL = "" // a bridge pushes nothing back
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
			mux := newMux(met, func() bool { return true })
			mux.Handle(bridgePath, n.Bridge())
			srv := serveHTTP(listen, mux, log)
			defer srv.Close()
			log.Info("feishu bridge listening", zap.String("listen", listen), zap.Strings("sinks", n.Sinks()))
			n.Run(ctx)
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":9978", "address for "+bridgePath+", /metrics and /healthz")
	nf.add(cmd.Flags(), false)
	return cmd
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

// serveHTTP serves mux on listen in the background; a failure to listen is
// logged, since the agent's main job goes on without its endpoint.
func serveHTTP(listen string, mux http.Handler, log *zap.Logger) *http.Server {
	srv := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			log.Error("serve HTTP", zap.String("listen", listen), zap.Error(err))
		}
	}()
	return srv
}
