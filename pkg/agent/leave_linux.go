package agent

import (
	"context"
	"os"
	"syscall"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/kube"
)

// leaveNode is what a stopping agent does to the node. In a pod whose
// DaemonSet lives on (a rolling update, as livesOn says) the next agent
// takes over: the pipe helper stays installed (core_pattern points back at
// it from the coredump socket) and collects the crashes in between.
// Otherwise (SIGINT, the DaemonSet deleted, no cluster) it restores what
// install replaced. livesOn is asked only at SIGTERM.
func leaveNode(cfg *config.Config, sig os.Signal, livesOn func() (bool, string), log *zap.Logger) {
	if sig == syscall.SIGTERM {
		if ok, why := livesOn(); ok {
			if res, err := Install(cfg, false); err != nil {
				log.Error("point core_pattern at the pipe helper", zap.Error(err))
			} else {
				log.Info("left corecatch installed for the next agent", zap.String("why", why), zap.String("core_pattern", res.Pattern))
			}
			return
		} else if why != "" {
			log.Info("restoring the node", zap.String("why", why))
		}
	}
	if res, err := Uninstall(cfg); err != nil {
		log.Error("restore core_pattern", zap.Error(err))
	} else {
		log.Info("restored", zap.String("core_pattern", res.Pattern))
	}
}

// daemonSetLivesOn asks the API server whether this agent's DaemonSet
// stays (a rolling update) or goes; false with no reason outside a cluster.
func daemonSetLivesOn(cfg *config.Config, log *zap.Logger) (bool, string) {
	ev, err := kube.New(kube.Options{Node: cfg.Node, Log: log})
	if err != nil {
		return false, ""
	}
	return ev.DaemonSetLivesOn(context.Background(), os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME"))
}
