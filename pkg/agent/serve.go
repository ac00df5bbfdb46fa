package agent

import (
	"context"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/metrics"
	"github.com/corecatch/corecatch/pkg/notify"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
)

// NewNotifier opens the notification queues in the spool and counts their
// outcomes in met; the agent's worker and `corecatch feishu-bridge` share
// it, so that both send the same cards (version is corecatch's).
func NewNotifier(cfg *config.Config, st store.Store, met *metrics.Metrics, log *zap.Logger, version string) (*notify.Notifier, error) {
	n, err := notify.New(cfg.Notify, spool.Open(cfg.Spool), notify.Options{Log: log, Version: version, Result: met.Notification,
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

// BridgePath is where Alertmanager's webhook reaches the Feishu bridge,
// the agent's (notify.bridge.listen) and `corecatch feishu-bridge`'s alike.
const BridgePath = "/alertmanager/feishu"

// serveBridge serves the agent's bridge on notify.bridge.listen, apart
// from the metrics port that every scraper reaches; nil when it is off.
func serveBridge(cfg *config.Config, n *notify.Notifier, log *zap.Logger) (*http.Server, error) {
	if cfg.Notify.Bridge.Listen == "" {
		return nil, nil
	}
	bridge, err := n.Bridge()
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle(BridgePath, bridge)
	log.Info("feishu bridge listening", zap.String("listen", cfg.Notify.Bridge.Listen))
	return ServeHTTP(cfg.Notify.Bridge.Listen, mux, log), nil
}

// NewMux serves /metrics, /healthz and /readyz (ready says whether the
// process is ready): the endpoints a DaemonSet's probes and Prometheus
// expect of the agent and of the bridge.
func NewMux(met *metrics.Metrics, ready func() bool) *http.ServeMux {
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

// NewServer is a server of h on addr with the bounds above, which every
// HTTP server of corecatch's keeps (`corecatch debuginfod` lengthens its
// WriteTimeout for large files).
func NewServer(addr string, h http.Handler) *http.Server {
	return &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: httpReadHeaderTimeout, ReadTimeout: httpReadTimeout,
		WriteTimeout: httpWriteTimeout, IdleTimeout: httpIdleTimeout, MaxHeaderBytes: httpMaxHeaderBytes}
}

// ServeHTTP serves mux on listen in the background, with the bounds above;
// a failure to listen is logged, since the agent's main job goes on
// without its endpoint.
func ServeHTTP(listen string, mux http.Handler, log *zap.Logger) *http.Server {
	srv := NewServer(listen, mux)
	go func() {
		if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			log.Error("serve HTTP", zap.String("listen", listen), zap.Error(err))
		}
	}()
	return srv
}
