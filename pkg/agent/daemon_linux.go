package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/collector"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/identity"
	"github.com/corecatch/corecatch/pkg/kube"
	"github.com/corecatch/corecatch/pkg/metrics"
	"github.com/corecatch/corecatch/pkg/observer"
	"github.com/corecatch/corecatch/pkg/proc"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/pkg/upload"
)

// Daemon is what `corecatch agent` runs with: the validated config, its
// logger, and the settings that are flags rather than config.
type Daemon struct {
	Config *config.Config
	Log    *zap.Logger
	// Listen is the address of /metrics, /healthz and /readyz.
	Listen string
	// RetentionInterval is how often retention runs on a local store.
	RetentionInterval time.Duration
	// Version is corecatch's, for metrics, cards and bundles.
	Version string
}

// Run runs the node daemon until SIGINT or SIGTERM: the supervisor, or,
// in the process the supervisor starts (WorkerEnv set), its worker. Both
// are this same command, so that a new image's agent runs as one.
func Run(ctx context.Context, d Daemon) error {
	if mode := os.Getenv(WorkerEnv); mode != "" {
		return runWorker(ctx, d, mode)
	}
	return runSupervisor(ctx, d)
}

// runSupervisor runs the agent's supervisor: it installs the intake, owns
// the coredump socket and core_pattern, and runs the worker (runWorker,
// this same command with WorkerEnv set), restarting it whenever it dies.
func runSupervisor(ctx context.Context, d Daemon) error {
	cfg, log := d.Config, d.Log
	st, err := store.FromConfig(cfg)
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
	leave := func() {
		left.Do(func() {
			leaveNode(cfg, sig(), func() (bool, string) { return daemonSetLivesOn(cfg, log) }, log)
		})
	}
	defer leave()
	return Supervise(ctx, os.Args[1:], mode, coresFile, log, sig, leave)
}

// lockedThreads is how many of the worker's threads are locked to a
// goroutine that blocks in a raw system call: the observer's reader
// (epoll_wait) and the freeze workers (a read on their pipe).
const lockedThreads = 1 + freezeWorkers

// reserveLockedThreads gives the runtime one processor more for each
// locked thread, unless GOMAXPROCS is set. A goroutine in a raw system
// call keeps its processor until the runtime's monitor takes it back (up
// to 10 ms on an idle agent); on a two-CPU node those threads held every
// processor as a crash came, and the crash's collection, the accept of
// its connection and the network poller waited their turn while the
// kernel held the crasher.
func reserveLockedThreads() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + lockedThreads)
	}
}

// runWorker serves the node under runSupervisor: the observer, the
// helper's socket, metrics and notifications, and, with the socket
// intake, the crashes on the coredump socket it inherits.
func runWorker(ctx context.Context, d Daemon, mode string) error {
	cfg, log := d.Config, d.Log
	reserveLockedThreads()
	st, err := store.FromConfig(cfg)
	if err != nil {
		return err
	}
	local, bounds := store.ForNode(cfg, st)
	var cores *net.UnixListener
	if mode == config.IntakeSocket {
		ln, err := net.FileListener(os.NewFile(CoresFD, "coredump.sock"))
		if err != nil {
			return fmt.Errorf("the coredump socket from the supervisor: %w", err)
		}
		cores = ln.(*net.UnixListener)
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts, err := ObserverOptions(cfg)
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
	met := metrics.New(d.Version, lost)
	met.Intake(mode)
	met.LimitExeLabels(cfg.Metrics.MaxExeLabels)
	met.DedupClusterWide(clusterDedupProbe(ctx, cfg, st, log))
	nt, err := NewNotifier(cfg, st, met, log, d.Version)
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
	srv := ServeHTTP(d.Listen, NewMux(met, ready.Load), log)
	defer srv.Close()
	if bridge, err := serveBridge(cfg, nt, log); err != nil {
		return err
	} else if bridge != nil {
		defer bridge.Close()
	}

	if retain, every := retention(cfg, st, d.RetentionInterval); retain != nil {
		go retainLoop(ctx, retain, every, met, log)
	}
	if s3, ok := st.(*store.S3); ok {
		go compactIndex(ctx, s3, met, log)
	}
	up := NewUploader(cfg, st, log, upload.Options{
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
	fz, err := NewFreezer(cfg)
	if err != nil {
		log.Error("freezer unavailable; containers will not be frozen", zap.Error(err))
		fz = nil
	}
	var claimer collector.Claimer
	if s3, ok := st.(*store.S3); ok && spool.Open(cfg.Spool).ClusterMarker().IsSet() {
		claimer = s3
	}
	return New(Options{
		Config: cfg, Log: log, Observer: ob, Freezer: fz, Store: local, Uploader: up,
		Cores: cores, Retention: bounds, Claimer: claimer, Version: d.Version,
		OnBundle:   met.Bundle,
		OnAnnounce: func(m *bundle.Metadata) { nt.Crash(ctx, m); podEvents(m) },
		OnSignal:   countSignal(ctx, cfg, met),
		OnReady:    func() { ready.Store(true) },
		OnStoreOp: func(op string, err error) {
			met.StoreOp(op, err)
			if op == "put" && err == nil && up != nil {
				up.Kick() // a crash without a core, recorded in the outbox
			}
		},
	}).Run(ctx)
}

// countSignal counts each fatal signal the observer sees in met, under
// the pod, workload and container of the process. The process is still
// there at its fatal signal: its cgroup names its container; the runtime,
// asked meanwhile, the rest.
func countSignal(ctx context.Context, cfg *config.Config, met *metrics.Metrics) func(observer.Event) {
	return func(ev observer.Event) {
		data, _ := proc.ReadFile(fmt.Sprintf("/proc/%d/cgroup", ev.TGID))
		go func() {
			id := identity.Resolve(ctx, identity.ProcCgroup(data), cfg.Identity.CRIEndpoint, time.Duration(cfg.Identity.Timeout), identity.SpoolCache(spool.Open(cfg.Spool)))
			met.Signal(ev.Kind.String(), bundle.SignalName(ev.Signal), id.Pod, id.Workload, id.Container)
		}()
	}
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
