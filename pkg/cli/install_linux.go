package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/corecatch/corecatch/pkg/agent"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/collector"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/coresock"
	"github.com/corecatch/corecatch/pkg/identity"
	"github.com/corecatch/corecatch/pkg/kube"
	"github.com/corecatch/corecatch/pkg/metrics"
	"github.com/corecatch/corecatch/pkg/observer"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/pkg/sysctl"
	"github.com/corecatch/corecatch/pkg/upload"
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
			res, err := install(cfg, false)
			if err != nil {
				return err
			}
			printInstall(cmd.OutOrStdout(), res)
			fmt.Fprintf(cmd.OutOrStdout(), "intake: pipe (the kernel runs the helper for each crash; the agent takes cores over %s when it runs)\n", cfg.CoredumpSocket)
			return nil
		},
	}
}

// install snapshots cfg into the spool and points core_pattern at this
// binary, or at its copy in host.bin_dir; with socket at the coredump
// socket instead, where an agent listens.
func install(cfg *config.Config, socket bool) (sysctl.Result, error) {
	if _, err := openStore(cfg); err != nil {
		return sysctl.Result{}, err
	}
	bin, err := os.Executable()
	if err == nil {
		bin, err = filepath.EvalSymlinks(bin)
	}
	if err != nil {
		return sysctl.Result{}, fmt.Errorf("find this binary's path: %w", err)
	}
	if cfg.Host.BinDir != "" {
		// The kernel runs the helper on the host: the pattern names the
		// copy by its host path, wherever this container sees it.
		if _, err := sysctl.CopyHelper(bin, cfg.Host.BinMountDir()); err != nil {
			return sysctl.Result{}, err
		}
		bin = filepath.Join(cfg.Host.BinDir, sysctl.HelperName)
	}
	sp := spool.Open(cfg.Spool)
	pattern, err := sysctl.Pattern(bin, sp.HelperConfig(), collector.PatternArgs)
	if err != nil {
		return sysctl.Result{}, err
	}
	// The snapshot is read on the host, by the helper and by an SRE's
	// uninstall there: it holds the host's view of the host paths.
	snap := *cfg
	snap.Host.BinMount, snap.Host.ProcSysKernel = "", sysctl.Proc
	// The helper notifies nobody: the bots' URLs and secrets stay off the
	// host's disk.
	snap.Notify = config.Default().Notify
	data, err := snap.Marshal()
	if err != nil {
		return sysctl.Result{}, err
	}
	if err := sp.WriteHelperConfig(data); err != nil {
		return sysctl.Result{}, err
	}
	sockPattern := coresock.Pattern(cfg.CoredumpSocket)
	if !socket {
		return sysctl.Install(cfg.Host.ProcSysKernel, sp.SysctlState(), pattern, sockPattern)
	}
	if len(sockPattern) > sysctl.MaxPattern {
		return sysctl.Result{}, fmt.Errorf("core_pattern %q is longer than the kernel's %d bytes: choose a shorter coredump_socket", sockPattern, sysctl.MaxPattern)
	}
	res, err := sysctl.Install(cfg.Host.ProcSysKernel, sp.SysctlState(), sockPattern, pattern)
	if err == nil {
		return res, nil
	}
	// The kernel may take the pattern only from its initial mount
	// namespace: try again from PID 1's, where the host's paths are the
	// real ones (its /proc/sys/kernel; the spool and socket are hostPaths).
	if herr := inHostMountNamespace(func() error {
		res, err = sysctl.Install(sysctl.Proc, sp.SysctlState(), sockPattern, pattern)
		return err
	}); herr != nil {
		return res, fmt.Errorf("%w; from the host's mount namespace: %w", err, herr)
	}
	return res, nil
}

// installIntake installs the intake cfg asks for: the coredump socket,
// listening, where the kernel takes it (core_modes lists socket, and the
// @@ pattern reads back as written), else the pipe helper, which is
// installed first in any case. It returns the listener (nil for the pipe)
// and what the first install found.
func installIntake(cfg *config.Config, log *zap.Logger) (sysctl.Result, *net.UnixListener, error) {
	res, err := install(cfg, false)
	if err != nil || cfg.Intake != config.IntakeSocket {
		return res, nil, err
	}
	if !sysctl.SocketSupported(cfg.Host.ProcSysKernel) {
		log.Warn("intake: pipe; this kernel cannot send cores to a socket (kernel.core_modes lacks socket, Linux < 6.16)")
		return res, nil, nil
	}
	ln, err := coresock.Listen(cfg.CoredumpSocket)
	if err != nil {
		log.Warn("intake: pipe; the coredump socket cannot listen", zap.Error(err))
		return res, nil, nil
	}
	sres, err := install(cfg, true)
	if err != nil {
		// Since 6.16.8 the kernel takes a pattern it cannot use on
		// write and refuses it on read: the pipe helper goes back.
		ln.Close()
		os.Remove(cfg.CoredumpSocket)
		log.Warn("intake: pipe; the kernel refused the coredump socket's pattern (Linux < 6.17, or not written from the host's mount namespace)", zap.Error(err))
		if _, err := install(cfg, false); err != nil {
			return res, nil, err
		}
		return res, nil, nil
	}
	res.Pattern = sres.Pattern
	return res, ln, nil
}

// uninstall restores the sysctls install replaced, then removes the helper
// it copied into host.bin_dir: in that order, so that the kernel never
// runs a pattern whose binary is gone.
// Without saved values in cfg's spool, the spool (and host.bin_dir) are
// those of the config the installed core_pattern names: install's own
// snapshot, which says where it saved them.
func uninstall(cfg *config.Config) (sysctl.Result, error) {
	if _, err := os.Stat(spool.Open(cfg.Spool).SysctlState()); errors.Is(err, fs.ErrNotExist) {
		if installed, err := installedConfig(cfg); err != nil {
			return sysctl.Result{}, err
		} else if installed != nil {
			cfg = installed
		}
	}
	res, err := sysctl.Uninstall(cfg.Host.ProcSysKernel, spool.Open(cfg.Spool).SysctlState())
	if err != nil || cfg.Host.BinDir == "" {
		return res, err
	}
	return res, sysctl.RemoveHelper(cfg.Host.BinMountDir())
}

// installedConfig reads the config the installed core_pattern names, with
// cfg's view of the host (where the kernel's files and bin_dir are from
// here); nil when the pattern is not corecatch's.
func installedConfig(cfg *config.Config) (*config.Config, error) {
	path, err := sysctl.InstalledConfig(cfg.Host.ProcSysKernel)
	if err != nil || path == "" {
		return nil, err
	}
	c, err := config.Load(path, true)
	if err != nil {
		return nil, fmt.Errorf("the installed core_pattern names %s: %w (pass the --spool that install used)", path, err)
	}
	c.Host.ProcSysKernel = cfg.Host.ProcSysKernel
	if cfg.Host.BinMount != "" {
		c.Host.BinMount = cfg.Host.BinMount
	}
	return c, nil
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
			res, err := uninstall(cfg)
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
` + bridgePath + ` on that address with the bearer token of
notify.bridge.token_file, into Feishu cards.

The bot's URL and secret: --feishu-webhook-file and --feishu-secret-file,
or $` + envWebhook + ` and $` + envSecret + ` (--feishu-webhook and
--feishu-secret show them to every user of the node in ps).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := mustRoot("agent"); err != nil {
				return err
			}
			nsErr := joinHostCgroupNamespace()
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
			return runAgent(cmd.Context(), cfg, listen, interval, log)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":9977", "address for /metrics, /healthz and /readyz")
	cmd.Flags().StringArrayVar(&freezeAllow, "freeze-allow", nil, "regular expression over cgroup paths that may be frozen, added to freeze.allow (repeatable)")
	cmd.Flags().StringArrayVar(&freezeDeny, "freeze-deny", nil, "regular expression over cgroup paths never to freeze, added to freeze.deny (repeatable)")
	cmd.Flags().DurationVar(&interval, "retention-interval", time.Minute, "how often to apply retention to a local store")
	nf.add(cmd.Flags(), true)
	return cmd
}

// runAgent runs the agent's supervisor: it installs the intake, owns the
// coredump socket and core_pattern, and runs the worker (runWorker, this
// same command with agent.WorkerEnv set), restarting it whenever it dies.
func runAgent(ctx context.Context, cfg *config.Config, listen string, interval time.Duration, log *zap.Logger) error {
	if mode := os.Getenv(agent.WorkerEnv); mode != "" {
		return runWorker(ctx, cfg, mode, listen, interval, log)
	}
	st, err := openStore(cfg)
	if err != nil {
		return err
	}
	res, cores, err := installIntake(cfg, log)
	if err != nil {
		return err
	}
	mode := config.IntakePipe
	var coresFile *os.File
	if cores != nil {
		mode = config.IntakeSocket
		if coresFile, err = cores.File(); err != nil {
			return fmt.Errorf("hand the coredump socket to the worker: %w", err)
		}
	}
	if res.AlreadyInstalled {
		// Killed before it could restore (SIGKILL, OOM, a node crash):
		// the sysctls it saved stay the ones to restore.
		log.Warn("repaired: a previous agent left corecatch installed; its saved sysctls will be restored at exit", zap.String("found", res.PreviousPattern))
	}
	log.Info("installed", zap.String("intake", mode), zap.String("core_pattern", res.Pattern), zap.String("previous", res.PreviousPattern), zap.String("store", st.String()))
	ctx, stop, sig := stopContext(ctx)
	defer stop()
	var left sync.Once
	leave := func() { left.Do(func() { leaveNode(cfg, sig(), log) }) }
	defer leave()
	return agent.Supervise(ctx, os.Args[1:], mode, coresFile, log, sig, leave)
}

// runWorker serves the node under runAgent's supervisor: the observer,
// the helper's socket, metrics and notifications, and, with the socket
// intake, the crashes on the coredump socket it inherits.
func runWorker(ctx context.Context, cfg *config.Config, mode, listen string, interval time.Duration, log *zap.Logger) error {
	st, err := openStore(cfg)
	if err != nil {
		return err
	}
	local, bounds := nodeStore(cfg, st)
	var cores *net.UnixListener
	if mode == config.IntakeSocket {
		ln, err := net.FileListener(os.NewFile(agent.CoresFD, "coredump.sock"))
		if err != nil {
			return fmt.Errorf("the coredump socket from the supervisor: %w", err)
		}
		cores = ln.(*net.UnixListener)
	}
	ctx, stop := signalContext(ctx)
	defer stop()
	opts, err := observerOptions(cfg)
	if err != nil {
		return err
	}
	ob, err := observer.Load(opts)
	if err != nil {
		// Cores still arrive through core_pattern without it.
		log.Error("eBPF observer not loaded; crashes without a core will not be seen", zap.Error(err))
		ob = nil
	} else {
		log.Info("eBPF observer loaded", zap.String("mode", string(ob.Mode())))
	}

	var lost func() float64
	if ob != nil {
		lost = func() float64 { st := ob.Stats(); return float64(st.Lost + st.Dropped + st.Undecodable) }
	}
	met := metrics.New(Version, lost)
	met.Intake(mode)
	met.LimitExeLabels(cfg.Metrics.MaxExeLabels)
	met.DedupClusterWide(clusterDedupProbe(ctx, cfg, st, log))
	nt, err := newNotifier(cfg, st, met, log)
	if err != nil {
		return err
	}
	go nt.Run(ctx)
	podEvents := func(*bundle.Metadata) {}
	if ev, err := kube.New(kube.Options{Node: cfg.Node, Log: log, Result: met.Notification}); err != nil {
		log.Info("pod events off", zap.Error(err))
	} else {
		met.Sink(kube.Sink, kube.Results)
		podEvents = ev.Crash
		go ev.Run(ctx)
	}
	var ready atomic.Bool
	srv := serveHTTP(listen, newMux(met, ready.Load), log)
	defer srv.Close()
	if bridge, err := agentBridge(cfg, nt, log); err != nil {
		return err
	} else if bridge != nil {
		defer bridge.Close()
	}

	if retain, every := retention(cfg, st, interval); retain != nil {
		// Age-based retention must run on nodes that stop crashing too.
		go func() {
			for {
				gone, err := retain(ctx)
				for range gone {
					met.StoreOp("delete", nil)
				}
				if err != nil {
					met.StoreOp("delete", err)
					log.Warn("retention", zap.Error(err))
				} else if len(gone) > 0 {
					log.Info("retention deleted bundles", zap.Strings("ids", gone))
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(every()):
				}
			}
		}()
	}
	if s3, ok := st.(*store.S3); ok {
		go compactIndex(ctx, s3, met, log)
	}
	up := newUploader(cfg, st, log, upload.Options{
		OnUpload:      func(_ *bundle.Metadata, err error) { met.StoreOp("upload", err) },
		OnBacklog:     met.UploadBacklog,
		OnQuarantine:  met.BundleQuarantined,
		OnQuarantined: met.UploadQuarantined,
	})
	if up != nil {
		log.Info("uploading bundles from the outbox", zap.String("outbox", local.String()), zap.String("store", st.String()),
			zap.String("spool_max_use", bounds.MaxUse.String()), zap.String("spool_keep_free", bounds.KeepFree.String()))
	}
	// The freezer is built even when freezing is off: a previous agent
	// may have left cgroups frozen, and this one thaws them.
	fz, err := agent.NewFreezer(cfg)
	if err != nil {
		log.Error("freezer unavailable; containers will not be frozen", zap.Error(err))
		fz = nil
	}
	var claimer collector.Claimer
	if s3, ok := st.(*store.S3); ok && clusterDedup(cfg) {
		claimer = s3
	}
	return agent.New(agent.Options{
		Config: cfg, Log: log, Observer: ob, Freezer: fz, Store: local, Uploader: up,
		Cores: cores, Retention: bounds, Claimer: claimer, Version: Version,
		OnBundle:   met.Bundle,
		OnAnnounce: func(m *bundle.Metadata) { nt.Crash(ctx, m); podEvents(m) },
		OnSignal: func(ev observer.Event) {
			// The process is still there at its fatal signal: its cgroup
			// names its container; the runtime, asked meanwhile, the rest.
			data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", ev.TGID))
			go func() {
				id := identity.Resolve(ctx, identity.ProcCgroup(data), cfg.Identity.CRIEndpoint, time.Duration(cfg.Identity.Timeout), identity.SpoolCache(spool.Open(cfg.Spool)))
				met.Signal(ev.Kind.String(), bundle.SignalName(ev.Signal), id.Pod, id.Workload, id.Container)
			}()
		},
		OnReady: func() { ready.Store(true) },
		OnStoreOp: func(op string, err error) {
			met.StoreOp(op, err)
			if op == "put" && err == nil && up != nil {
				up.Kick() // a crash without a core, recorded in the outbox
			}
		},
	}).Run(ctx)
}

// leaveNode is what a stopping agent does to the node. In a pod whose
// DaemonSet lives on (a rolling update) the next agent takes over: the
// pipe helper stays installed (core_pattern points back at it from the
// coredump socket) and collects the crashes in between. Otherwise
// (SIGINT, the DaemonSet deleted, no cluster) it restores what install
// replaced.
func leaveNode(cfg *config.Config, sig os.Signal, log *zap.Logger) {
	if sig == syscall.SIGTERM {
		if ok, why := daemonSetLivesOn(cfg, log); ok {
			if res, err := install(cfg, false); err != nil {
				log.Error("point core_pattern at the pipe helper", zap.Error(err))
			} else {
				log.Info("left corecatch installed for the next agent", zap.String("why", why), zap.String("core_pattern", res.Pattern))
			}
			return
		} else if why != "" {
			log.Info("restoring the node", zap.String("why", why))
		}
	}
	if res, err := uninstall(cfg); err != nil {
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

// stopContext ends at SIGINT or SIGTERM, and tells which ended it.
func stopContext(ctx context.Context) (context.Context, context.CancelFunc, func() os.Signal) {
	ctx, cancel := context.WithCancel(ctx)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	var got atomic.Value
	go func() {
		select {
		case s := <-ch:
			got.Store(s)
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, func() { signal.Stop(ch); cancel() }, func() os.Signal {
		s, _ := got.Load().(os.Signal)
		return s
	}
}

// signalContext ends at SIGINT or SIGTERM.
func signalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
}

// retention returns how the agent applies retention to st and how long to
// wait between two runs: to a local store every interval; to an S3 store,
// which every node of a cluster sweeps, bundles older than max_age about
// every retention.sweep_interval, each wait drawn between half and one
// and a half of it so that nodes spread out. It returns nil when nothing
// is to be done.
func retention(cfg *config.Config, st store.Store, interval time.Duration) (func(context.Context) ([]string, error), func() time.Duration) {
	switch s := st.(type) {
	case *store.File:
		return func(ctx context.Context) ([]string, error) {
			return s.Vacuum(ctx, collector.RetentionFor(cfg.Retention, s), "")
		}, func() time.Duration { return interval }
	case *store.S3:
		age, every := time.Duration(cfg.Retention.MaxAge), time.Duration(cfg.Retention.SweepInterval)
		if age <= 0 || every <= 0 {
			return nil, nil
		}
		return func(ctx context.Context) ([]string, error) {
			return s.Sweep(ctx, age)
		}, func() time.Duration { return every/2 + rand.N(every) }
	}
	return nil, nil
}

// compactEvery is about how often each agent folds the settled hours of
// an S3 store's index into segments; each wait is drawn between half and
// one and a half of it, so that a cluster's agents spread out, and the
// first agent to come by after an hour settled does the work for all.
const compactEvery = 30 * time.Minute

// compactIndex keeps an S3 store's index compact until ctx ends.
func compactIndex(ctx context.Context, s *store.S3, met *metrics.Metrics, log *zap.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(compactEvery/2 + rand.N(compactEvery)):
		}
		n, err := s.CompactIndex(ctx, time.Now())
		met.StoreOp("compact", err)
		if err != nil {
			log.Warn("compact the store's index", zap.Error(err))
		} else if n > 0 {
			log.Info("compacted the store's index", zap.Int("segments", n))
		}
	}
}

// clusterDedupProbe finds out whether deduplication can span the cluster
// (an S3 store whose service refuses a second conditional create) and
// tells the helpers through spool.ClusterMarker.
func clusterDedupProbe(ctx context.Context, cfg *config.Config, st store.Store, log *zap.Logger) bool {
	marker := spool.Open(cfg.Spool).ClusterMarker()
	s3, ok := st.(*store.S3)
	if !ok || cfg.Dedup.Window <= 0 {
		marker.Clear()
		return false
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s3.ProbeClaims(pctx); err != nil {
		marker.Clear()
		log.Warn("deduplication stays node-local: each node keeps one core per bug", zap.String("store", st.String()), zap.Error(err))
		return false
	}
	if err := marker.Set(st.String()); err != nil {
		log.Warn("deduplication stays node-local", zap.Error(err))
		return false
	}
	log.Info("deduplication is cluster-wide: one core per bug across the nodes sharing the store", zap.String("store", st.String()))
	return true
}
