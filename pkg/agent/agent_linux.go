// Package agent is the node daemon: it keeps corecatch installed as the
// kernel's core dump handler, runs the eBPF observer, answers the pipe
// helper's questions over a root-only unix socket, and takes the helper's
// report of each bundle, including the reports helpers left in the spool
// while the agent was down, and with an S3 store uploads the bundles the
// helper left in the outbox.
package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/agentapi"
	"github.com/corecatch/corecatch/pkg/analysis"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/collector"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/freezer"
	"github.com/corecatch/corecatch/pkg/observer"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/pkg/upload"
)

// Options configure an Agent.
type Options struct {
	Config *config.Config
	Log    *zap.Logger
	// Observer is the loaded observer, or nil when it could not load:
	// cores still arrive through core_pattern without it.
	Observer *observer.Observer
	// OnBundle is called for every bundle the helper reports (live or
	// from the spool), at once; OnAnnounce for each once it is complete,
	// after gdb's unwind when one runs (what notifications want);
	// OnSignal for every fatal signal the observer sees, and OnReady once
	// the socket listens.
	OnBundle   func(*bundle.Metadata)
	OnAnnounce func(*bundle.Metadata)
	OnSignal   func(observer.Event)
	OnReady    func()
	// OnStoreOp is called for each operation the agent makes on the store.
	OnStoreOp func(op string, err error)
	// Store receives the metadata-only bundles of crashes whose core
	// never arrived (where the helper writes: the outbox with an S3
	// store); nil disables them.
	Store store.Store
	// Uploader empties the outbox into an S3 store, kicked for every
	// reported bundle; nil with a local store.
	Uploader *upload.Uploader
	// Freezer thaws what a previous agent left frozen and, with
	// freeze.enabled, freezes a crasher's container while its core
	// streams; nil when it could not be set up.
	Freezer *freezer.Freezer
	// Cores is the kernel's coredump socket, listening, with the socket
	// intake: the agent collects each crash itself, into Store. Nil with
	// the pipe intake.
	Cores *net.UnixListener
	// Retention bounds Store for the agent's own collections, Claimer
	// makes their deduplication cluster-wide (nil: node-local), Version
	// goes into their bundles.
	Retention config.Retention
	Claimer   collector.Claimer
	Version   string
}

// Agent serves one node.
type Agent struct {
	o       Options
	events  *eventCache
	freezes *freezes
	missing *missing
	// analyze feeds the worker that runs gdb on stored cores, one at a
	// time; queued holds the ids it has, so that none is done twice.
	analyze chan *bundle.Metadata
	mu      sync.Mutex
	queued  map[string]bool
	// lastCore is when the observer last saw a core-dumping signal (Unix
	// nanoseconds): gdb waits for a quiet moment.
	lastCore atomic.Int64
	// uncounted holds, by the id of the bundle that keeps a bug's core,
	// the duplicates refused while that bundle was still being written
	// (a refusal before the dump is over long before the kept core is):
	// they are counted into it when it is reported.
	uncounted map[string]int
	// held counts the crashes the agent collects at once (collect.backlog),
	// from the coredump socket or handed over by the pipe helper; taking
	// waits for the handed-over ones when the agent stops.
	held   chan struct{}
	taking sync.WaitGroup
	// early holds the coredump socket's collections started at their eBPF
	// event, until the kernel connects (startEarly).
	early *earlyCrashes
}

// analyzeQuiet is how long after the last crash the analysis worker waits
// before it runs gdb: a crash storm, and freezing its containers, come
// first.
const analyzeQuiet = time.Second

// analyzeQueue bounds the bundles waiting for gdb; beyond it a bundle is
// announced with its frame-pointer backtrace only.
const analyzeQueue = 256

// stopDrain is how long a stopping agent still accepts on the coredump
// socket after core_pattern changed.
const stopDrain = 200 * time.Millisecond

// New prepares an agent.
func New(o Options) *Agent {
	if o.OnBundle == nil {
		o.OnBundle = func(*bundle.Metadata) {}
	}
	if o.OnAnnounce == nil {
		o.OnAnnounce = func(*bundle.Metadata) {}
	}
	if o.OnSignal == nil {
		o.OnSignal = func(observer.Event) {}
	}
	if o.OnReady == nil {
		o.OnReady = func() {}
	}
	if o.OnStoreOp == nil {
		o.OnStoreOp = func(string, error) {}
	}
	a := &Agent{o: o, events: newEventCache(5 * time.Minute), analyze: make(chan *bundle.Metadata, analyzeQueue), queued: map[string]bool{}, uncounted: map[string]int{},
		held: make(chan struct{}, o.Config.Collect.Backlog), early: newEarlyCrashes()}
	if o.Freezer != nil && o.Config.Freeze.Enabled {
		a.freezes = &freezes{f: o.Freezer, max: time.Duration(o.Config.Freeze.Max), log: o.Log, allowed: podFreeze(o.Config), byPID: map[int]*freezeState{}}
	}
	if o.Store != nil {
		a.missing = &missing{store: o.Store, after: time.Duration(o.Config.Observer.MissingAfter), node: o.Config.Node,
			log: o.Log, freezeCgroup: a.freezeCgroup, storeOp: o.OnStoreOp, published: func(m *bundle.Metadata) { a.o.OnBundle(m); a.announce(m) }, pending: map[int]*pendingCore{},
			records: spool.Open(o.Config.Spool).Missing()}
	}
	return a
}

// Run serves until ctx ends. It ingests spooled reports first, then
// listens on the socket; the socket is removed when Run returns, so that
// helpers of later crashes know no agent runs.
func (a *Agent) Run(ctx context.Context) error {
	log := a.o.Log
	if a.o.Freezer != nil {
		// A previous agent killed mid-freeze left these frozen.
		thawed, err := a.o.Freezer.ThawRecorded()
		if err != nil {
			log.Error("thaw cgroups a previous agent left frozen", zap.Error(err))
		}
		if len(thawed) > 0 {
			log.Info("thawed cgroups a previous agent left frozen", zap.Strings("cgroups", thawed))
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { a.analyzeLoop(ctx) })
	if a.missing != nil {
		a.missing.resume()
	}
	a.ingestSpool()
	a.resumeAnalysis(ctx)
	ln, err := agentapi.Listen(a.o.Config.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(a.o.Config.Socket)
	a.o.OnReady()
	wg.Go(func() {
		if err := agentapi.Serve(ln, a.handle); err != nil {
			log.Error("agent socket", zap.Error(err))
		}
	})
	if ob := a.o.Observer; ob != nil {
		ob.OnCore(func(ev observer.Event) { a.onCore(ctx, ev) })
		wg.Go(func() { a.watch(ob) })
	}
	if a.o.Cores != nil {
		wg.Go(func() { a.serveCores(ctx, a.o.Cores) })
	}
	if up := a.o.Uploader; up != nil {
		wg.Go(func() { up.Run(ctx) })
	}
	<-ctx.Done()
	if a.o.Cores != nil {
		// The supervisor pointed core_pattern elsewhere before it told
		// the worker to stop: the connections queued before are still
		// taken, then the worker stops accepting.
		a.o.Cores.SetDeadline(time.Now().Add(stopDrain))
	}
	ln.Close()
	a.taking.Wait()
	if a.o.Observer != nil {
		a.o.Observer.Close()
	}
	wg.Wait()
	return nil
}

// ingestSpool takes the reports helpers wrote while no agent listened.
func (a *Agent) ingestSpool() {
	spooled := spool.Open(a.o.Config.Spool).Reports()
	reports, err := spooled.List()
	if err != nil {
		a.o.Log.Warn("read spooled reports", zap.Error(err))
	}
	for _, m := range reports {
		a.bundle(m, true)
		if err := spooled.Forget(m.ID); err != nil {
			a.o.Log.Warn("forget spooled report", zap.String("id", m.ID), zap.Error(err))
		}
	}
}

// event answers "event": pid's eBPF event, waited for up to wait, and the
// freeze of its container. early, for the agent's own intakes, waits for
// no more of the freeze than the crasher's cgroup (FreezePending): a
// container's crash is decided while its freeze goes on.
func (a *Agent) event(pid int, wait time.Duration, early bool) agentapi.Response {
	deadline := time.Now().Add(wait)
	ev, ok := a.events.wait(pid, wait)
	if !ok {
		return agentapi.Response{Error: "no eBPF event for this pid"}
	}
	resp := agentapi.Response{Event: ev.Bundle(), Freeze: &bundle.Freeze{Reason: "freezing is disabled"}}
	if a.freezes == nil {
		return resp
	}
	if early {
		if path, ok := a.freezes.cgroup(pid, time.Until(deadline)); ok {
			resp.Freeze, resp.FreezePending = &bundle.Freeze{Cgroup: path}, true
			return resp
		}
	}
	resp.Freeze = a.freezes.record(pid, time.Until(deadline))
	return resp
}

// freezeCgroup returns the cgroup the freeze of pid's container recorded.
func (a *Agent) freezeCgroup(pid int) string {
	if a.freezes == nil {
		return ""
	}
	if rec := a.freezes.record(pid, 0); rec != nil {
		return rec.Cgroup
	}
	return ""
}

func (a *Agent) bundle(m *bundle.Metadata, spooled bool) {
	if a.missing != nil {
		a.missing.reported(m.PID)
	}
	a.o.Log.Info("crash collected",
		zap.String("id", m.ID), zap.String("exe", m.Exe), zap.String("signal", m.SignalName),
		zap.Int("pid", m.PID), zap.Int64("raw_bytes", m.Core.RawBytes), zap.Int64("stored_bytes", m.Core.StoredBytes),
		zap.Bool("truncated", m.Core.Truncated), zap.String("truncate_reason", m.Core.TruncateReason),
		zap.Bool("from_spool", spooled), zap.String("debug", "corecatch debug "+m.ID))
	if d := m.Dedup; d != nil && d.Of != "" {
		a.countDedup(d, 1)
	}
	a.mu.Lock()
	n := a.uncounted[m.ID]
	delete(a.uncounted, m.ID)
	a.mu.Unlock()
	if n > 0 && m.Dedup != nil {
		a.countDedup(&bundle.Dedup{Of: m.ID, Key: m.Dedup.Key, Until: m.Dedup.Until}, n)
	}
	a.o.OnBundle(m)
	if m.Analysis != nil && m.Analysis.Pending && a.enqueue(m) {
		return // announced once gdb is done
	}
	a.announce(m)
}

// announce notifies a bundle, and lets the uploader take it.
func (a *Agent) announce(m *bundle.Metadata) {
	a.o.OnAnnounce(m)
	if a.o.Uploader != nil {
		a.o.Uploader.Kick()
	}
}

// enqueue hands a bundle to the analysis worker, unless it has it already
// or its queue is full.
func (a *Agent) enqueue(m *bundle.Metadata) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.queued[m.ID] {
		return true
	}
	select {
	case a.analyze <- m:
		a.queued[m.ID] = true
		return true
	default:
		a.o.Log.Warn("analysis queue full: announcing the crash with its frame-pointer backtrace", zap.String("id", m.ID))
		if u, ok := a.o.Store.(store.Updater); ok {
			u.Update(context.Background(), m.ID, func(stored *bundle.Metadata) error {
				stored.Analysis = &bundle.Analysis{Unwinder: m.Analysis.Unwinder, Reason: "the agent's analysis queue was full"}
				return nil
			})
		}
		return false
	}
}

// analyzeLoop runs gdb on each stored core in turn, amends its metadata and
// then announces it (metrics, notifications), backtrace and all.
func (a *Agent) analyzeLoop(ctx context.Context) {
	work := spool.Open(a.o.Config.Spool).Analysis()
	os.RemoveAll(work) // what a killed agent left
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-a.analyze:
			for quiet := time.Since(time.Unix(0, a.lastCore.Load())); quiet < analyzeQuiet; quiet = time.Since(time.Unix(0, a.lastCore.Load())) {
				select {
				case <-ctx.Done():
					return
				case <-time.After(analyzeQuiet - quiet):
				}
			}
			start := time.Now()
			done, err := analysis.Complete(ctx, a.o.Config.Analysis, a.o.Store, m, work)
			if err != nil {
				a.o.Log.Info("no full unwind", zap.String("id", m.ID), zap.Error(err))
			} else {
				a.o.Log.Info("crash analysed", zap.String("id", m.ID), zap.String("title", done.Title),
					zap.Duration("took", time.Since(start)))
			}
			a.mu.Lock()
			delete(a.queued, m.ID)
			a.mu.Unlock()
			a.announce(done)
		}
	}
}

// resumeAnalysis queues the stored cores a previous agent did not get to
// analyse before it stopped.
func (a *Agent) resumeAnalysis(ctx context.Context) {
	if a.o.Store == nil {
		return
	}
	list, err := a.o.Store.List(ctx)
	if err != nil {
		a.o.Log.Warn("look for bundles waiting for analysis", zap.Error(err))
	}
	for _, m := range list {
		if m.Analysis != nil && m.Analysis.Pending {
			a.enqueue(m)
		}
	}
}

// countDedup counts a deduplicated crash into the bundle that keeps its
// bug's core: in the outbox while it waits for upload, else in the store
// it went to (an S3 store, where other nodes may count at the same time).
func (a *Agent) countDedup(d *bundle.Dedup, n int) {
	inc := func(first *bundle.Metadata) error {
		if first.Dedup == nil {
			first.Dedup = &bundle.Dedup{Count: 1, Key: d.Key, Until: d.Until}
		}
		first.Dedup.Count += n
		return nil
	}
	err := errors.New("the store cannot amend metadata")
	if u, ok := a.o.Store.(store.Updater); ok {
		err = u.Update(context.Background(), d.Of, inc)
	}
	if errors.Is(err, store.ErrNotFound) && a.o.Uploader != nil {
		if u, ok := a.o.Uploader.Remote().(store.Updater); ok {
			err = u.Update(context.Background(), d.Of, inc)
		}
	}
	if errors.Is(err, store.ErrNotFound) && time.Now().Before(d.Until) {
		// Still being written, here or by a helper: counted at its report.
		a.mu.Lock()
		a.uncounted[d.Of] += n
		a.mu.Unlock()
		return
	}
	a.o.OnStoreOp("update", err)
	if err != nil {
		a.o.Log.Warn("count a deduplicated crash in its first bundle", zap.String("first", d.Of), zap.Error(err))
	}
}

// onCore is what follows a core event at once, on the observer's
// real-time reader thread (OnCore), before the event is queued for watch:
// the freeze of the crasher's container starts, and the event is kept for
// the crash's collection, which starts now when the coredump socket will
// take it (startEarly).
func (a *Agent) onCore(ctx context.Context, ev observer.Event) {
	a.lastCore.Store(time.Now().UnixNano())
	if a.freezes != nil {
		a.freezes.start(ev)
	}
	a.events.add(ev)
	a.startEarly(ctx, ev)
}

// watch consumes the observer's events once onCore has seen a core event.
// It runs in the background (observer.Background): what a crash needs at
// once (its freeze, its collection) onCore started on the reader's
// real-time thread, and this goroutine's work (the missing-core journal,
// metrics, the log) must not take a CPU from the collection deciding the
// crash while the kernel holds it.
func (a *Agent) watch(ob *observer.Observer) {
	if err := observer.Background(); err != nil {
		a.o.Log.Warn("the observer's events are handled at normal priority", zap.Error(err))
	}
	if err := observer.CanBeUrgent(); err != nil {
		a.o.Log.Warn("the path from a fatal signal to the freeze runs at normal priority", zap.Error(err))
	}
	for ev := range ob.Events() {
		if ev.Kind == observer.KindCore && !ev.OnCore {
			a.onCore(context.Background(), ev) // decoded before Run set OnCore
		}
		if a.missing != nil {
			// A core event is noted on disk (an append of tens of µs)
			// long before its collection reports a bundle, which takes
			// milliseconds more; an intake that takes the crash first
			// notes it itself (missing.taken). A worker killed during
			// the collection leaves the crash to the next.
			switch ev.Kind {
			case observer.KindCore:
				a.missing.core(ev)
			case observer.KindExit:
				a.missing.exit(ev)
			}
		}
		if ev.Kind == observer.KindExit && a.freezes != nil {
			a.freezes.exited(ev.TGID)
		}
		if ev.Kind == observer.KindFatal {
			a.events.add(ev)
		}
		if ev.Kind == observer.KindCore || ev.Kind == observer.KindFatal {
			a.o.OnSignal(ev)
		}
		a.o.Log.Info("fatal signal", zap.Stringer("kind", ev.Kind), zap.Int("tgid", ev.TGID), zap.String("comm", ev.Comm),
			zap.String("signal", bundle.SignalName(ev.Signal)), zap.Uint64("cgroup_id", ev.CgroupID), zap.String("outcome", ev.Outcome))
	}
}

// handle answers one helper request.
func (a *Agent) handle(req agentapi.Request) agentapi.Response {
	if req.Core != nil && req.Op != "take" {
		req.Core.Close()
	}
	switch req.Op {
	case "take":
		if req.Core == nil {
			return agentapi.Response{Error: "take without the core's pipe"}
		}
		if err := a.take(req.Args, req.Core); err != nil {
			return agentapi.Response{Error: err.Error()}
		}
		return agentapi.Response{}
	case "event":
		return a.event(req.PID, min(time.Duration(req.WaitMS)*time.Millisecond, 2*time.Second), false)
	case "release":
		if a.freezes == nil {
			return agentapi.Response{}
		}
		return agentapi.Response{Freeze: a.freezes.thaw(req.PID, "the core is in")}
	case "report":
		if req.Bundle == nil {
			return agentapi.Response{Error: "report without a bundle"}
		}
		if a.freezes != nil {
			a.freezes.thaw(req.Bundle.PID, "the bundle is published")
		}
		a.bundle(req.Bundle, false)
		return agentapi.Response{}
	}
	return agentapi.Response{Error: "unknown op " + req.Op}
}
