package collector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/agentapi"
	"github.com/corecatch/corecatch/pkg/analysis"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/identity"
	"github.com/corecatch/corecatch/pkg/proc"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
)

// Run collects one crash into one bundle. It returns the published
// metadata. Whatever fails, it reads the core pipe to its end or closes it,
// so the kernel never waits on a dead helper.
func Run(ctx context.Context, o Options) (*bundle.Metadata, error) {
	c := newCrash(o)
	defer c.end()
	if err := c.parse(ctx); err != nil {
		return nil, err
	}
	if c.o.Connected != nil && !c.o.Connected() {
		c.answered = true // no one to answer
		return nil, ErrNotConnected
	}
	c.decide(ctx)
	if err := c.capture(ctx); err != nil {
		return nil, err
	}
	if err := c.submit(ctx); err != nil {
		return nil, err
	}
	c.vacuum(ctx)
	return c.m, nil
}

// ErrNotConnected is Run's error when Options.Connected says the intake's
// connection did not come: nothing is recorded (the crash is the intake's
// to record, or was not dumped).
var ErrNotConnected = errors.New("the kernel did not connect for this crash's core")

// crash is one collection, carried through its phases, each of which reads
// what the ones before it left here: parse (the request, and the facts the
// agent, the core's head, the live process and its container give), decide
// (keep the core or refuse it, by decide.go's rules), capture (the
// process's files, the core streamed or refused, the process let go),
// submit (publish the bundle, report it to the agent) and vacuum (the
// store's retention, before the core is written and after it is).
type crash struct {
	o        Options // o.Core is set once the core is taken
	cfg      *config.Config
	req      Request
	start    time.Time
	helper   bool // a process of its own, run by the kernel
	when     answerTime
	answered bool

	m         *bundle.Metadata
	local     *store.File // a local store, which retention bounds
	w         store.Writer
	committed bool

	// The facts: the agent's record of the crash, the core's head, the
	// frame-pointer walk and whose crash it is.
	agent *agentapi.Response
	head  []byte
	pipe  *stallReader
	quick analysis.Result
	ident *identity.Identity

	// The decision and what carries it out.
	v         verdict
	cs        *coreStream
	slot      *os.File
	retention store.Retention
	files     *capture
	coreFile  io.WriteCloser
	readErr   error
	released  time.Time // let go before its dump (refused)
	held      time.Duration
}

func newCrash(o Options) *crash {
	c := &crash{o: o, cfg: o.Config, req: o.Request, start: time.Now(),
		helper: o.Agent == nil, when: answerTimeFor(o.Answer != nil, len(o.Stack))}
	c.local, _ = o.Store.(*store.File)
	if c.helper {
		c.o.Agent = socketLink{c.cfg.Socket, spool.Open(c.cfg.Spool).Reports()}
	}
	return c
}

// end lets go of what a collection holds, however it ended: its slot, an
// unpublished bundle, an intake not answered yet (which then dumps
// nothing) and the core.
func (c *crash) end() {
	if c.slot != nil {
		c.slot.Close()
	}
	if c.w != nil && !c.committed {
		c.w.Abort()
	}
	c.answer(false)
	if c.o.Core != nil {
		c.o.Core.Close()
	}
}

// answer tells an intake that asks (Options.Answer) whether the core is
// kept, once; a kept core is then opened.
func (c *crash) answer(keep bool) error {
	if c.answered || c.o.Answer == nil {
		return nil
	}
	c.answered = true
	if err := c.o.Answer(keep); err != nil {
		return err
	}
	if keep && c.o.Core == nil {
		f, err := c.o.OpenCore()
		if err != nil {
			return err
		}
		c.o.Core = f
	}
	return nil
}

func (c *crash) warn(w string) { c.m.Warnings = append(c.m.Warnings, w) }

// parse turns the kernel's request into the bundle's first metadata and
// gathers the facts the decision reads.
func (c *crash) parse(ctx context.Context) error {
	if c.when == answerFirst {
		// No stack to decide on: take the core, decide on its head.
		if err := c.answer(true); err != nil {
			return fmt.Errorf("take the core of pid %d: %w", c.req.PID, err)
		}
	}
	if c.o.Core != nil {
		enlargePipe(c.o.Core)
	}
	stack := c.startWalk()
	if c.o.FromProc {
		req, err := procRequest(c.req)
		if err != nil {
			c.o.Log.Warn("the crash's request", zap.Error(err))
		}
		c.req = req
	}
	c.m = newMetadata(c.req, c.cfg.Node)
	if c.helper {
		// The agent's record is a round trip away: asked meanwhile.
		var wg sync.WaitGroup
		wg.Go(c.lookup)
		c.walk(stack)
		wg.Wait()
	} else {
		c.lookup() // in the agent, a call that finds the record there
		c.walk(stack)
	}
	c.identify(ctx)
	return nil
}

// newMetadata is what the request says of the crash, the thread's name
// read from /proc (taskComm) unless the request has it exactly.
func newMetadata(req Request, node string) *bundle.Metadata {
	if !req.CommExact {
		req.Comm = taskComm(req)
	}
	m := &bundle.Metadata{
		Schema: bundle.Schema, ID: bundle.NewID(req.Time, req.Comm), Time: req.Time, Node: node,
		PID: req.PID, TID: req.TID, UID: req.UID, GID: req.GID,
		Signal: req.Signal, SignalName: bundle.SignalName(req.Signal), Dumpable: req.Dumpable,
	}
	m.Comm, m.CommRaw = bundle.Text(req.Comm)
	if m.Node == "" {
		m.Node, _ = os.Hostname()
	}
	return m
}

// open starts the bundle in the store, once what dead collections left
// there is cleared; when it cannot, nothing is collected.
func (c *crash) open(ctx context.Context) error {
	c.cleanStale()
	w, err := c.o.Store.Put(ctx, c.m.ID)
	if err != nil {
		return fmt.Errorf("start bundle in %s: %w", c.o.Store, err)
	}
	c.w = w
	return nil
}

// lookup takes the agent's record of the signal, and what it did to the
// container. It arrived before the core started (the observer runs in the
// dying task before do_coredump), so a short wait suffices; without an
// agent the helper goes on alone.
func (c *crash) lookup() {
	resp, err := c.o.Agent.Lookup(c.req.PID, lookupWait, true)
	if err != nil {
		if !errors.Is(err, agentapi.ErrNoAgent) {
			c.o.Log.Warn("no eBPF event from the agent", zap.Error(err))
		}
		return
	}
	c.agent = resp
}

// startWalk starts the walk of the eBPF event's stack, which needs only
// the event (the pid, the signal, the stack), so that it runs while the
// rest of the crash is read; nil when there is no stack to decide on.
func (c *crash) startWalk() func() (analysis.Result, bool) {
	if c.when != answerOnStack {
		return nil
	}
	pid, signal, stack := c.req.PID, bundle.SignalName(c.req.Signal), c.o.Stack
	return liveWalk(pid, signal, func() analysis.Result { return analysis.LiveStack(pid, signal, stack) }, time.Duration(c.cfg.Collect.CaptureTimeout))
}

// walk finds where it crashed, from the eBPF stack (the walk startWalk
// started) or the core's first bytes, and the live process, before a byte
// of the core is kept: a known bug's core is not. Every read of the pipe
// gives up after collect.capture_timeout without a byte (the kernel's dump
// can block on the crasher's files), and the walk reads the crasher's
// memory and files for at most as long.
func (c *crash) walk(stack func() (analysis.Result, bool)) {
	stall := time.Duration(c.cfg.Collect.CaptureTimeout)
	if c.o.Core != nil {
		c.pipe = &stallReader{f: c.o.Core, stall: stall}
	}
	pid, m := c.req.PID, c.m
	if stack == nil {
		var regs analysis.Regs
		var regsErr error
		c.head, regs, regsErr = readHead(c.pipe)
		if m.Signal == 0 && regs.Signal > 0 {
			m.Signal, m.SignalName = regs.Signal, bundle.SignalName(regs.Signal)
		}
		stack = liveWalk(pid, m.SignalName, func() analysis.Result { return analysis.Live(pid, m.SignalName, regs, regsErr) }, stall)
	}
	quick, ok := stack()
	if !ok {
		m.Collector.Missing = append(m.Collector.Missing, "the frame-pointer walk")
	}
	c.quick = quick
	m.Backtrace, m.Title, m.Signature = quick.Frames, quick.Title, quick.Signature
	m.Analysis = &bundle.Analysis{Unwinder: "frame-pointers", Reason: quick.Reason, Warnings: quick.Warnings}
}

// freeze is what the agent did to the crasher's container (nil: nothing,
// or no agent).
func (c *crash) freeze() *bundle.Freeze {
	if c.agent == nil {
		return nil
	}
	return c.agent.Freeze
}

// identify finds whose crash it is: the process's cgroup (or the one the
// agent froze it in) names its container, the runtime the rest. Cached
// per container in the spool, so a storm asks the runtime once.
func (c *crash) identify(ctx context.Context) {
	m := c.m
	m.Cgroup = crashCgroup(c.freeze(), func() string {
		cgroup, _ := proc.ReadFile(fmt.Sprintf("/proc/%d/cgroup", c.req.PID))
		return identity.ProcCgroup(cgroup)
	})
	c.ident = identity.Resolve(ctx, m.Cgroup, c.cfg.Identity.CRIEndpoint, time.Duration(c.cfg.Identity.Timeout), identity.SpoolCache(spool.Open(c.cfg.Spool)))
	m.Container, m.Pod, m.Workload = c.ident.Container, c.ident.Pod, c.ident.Workload
	m.IdentitySource, m.IdentityReason = c.ident.Source, c.ident.Reason
}

// decide says whether the core is kept (decideCore), counting the crash in
// the node's storm records only when nothing before refused it, then makes
// room for what is kept.
func (c *crash) decide(ctx context.Context) {
	limit, reason := coreLimit(c.cfg.Collect, c.req.RlimitCore)
	storm := func() string { return stormReason(ctx, c.cfg, c.o.Claimer, c.m, c.quick.ExeID) }
	c.v = decideCore(limit, reason, c.cfg.Pods.Policy(c.m.Pod.Scope()), c.o.Refuse, storm, c.takeSlot)
	if c.v.warning != "" {
		c.warn(c.v.warning)
	}
	c.cs = newCoreStream(c.v.limit, c.v.reason, zstdLevel(c.cfg.Collect.Compression))
	c.vacuumBefore(ctx)
}

// takeSlot takes one of the node's collection slots, held until the
// collection ends.
func (c *crash) takeSlot() bool {
	slot, ok := takeSlot(spool.Open(c.cfg.Spool), c.cfg.Collect.MaxConcurrent)
	c.slot = slot
	return ok
}

// capture starts the bundle and reads what it keeps of the live process
// while the core streams into it (or, refused, is closed or drained),
// then lets the process go. A crash decided before its dump is answered
// here: a refused one once what it keeps is read, and its bundle started
// only then; a kept one at once. When the bundle cannot be started, the
// core is drained (or, for the agent's intakes, closed) and nothing is
// collected.
func (c *crash) capture(ctx context.Context) error {
	cfg := c.cfg.Collect
	c.files = &capture{
		proc:         fmt.Sprintf("/proc/%d", c.req.PID),
		maxFileBytes: cfg.MaxFileBytes.Bytes,
		budget:       cfg.MaxFilesTotalBytes.Bytes,
		charge:       c.cs.charge,
		withEnviron:  cfg.CaptureEnviron,
		readNetwork:  cfg.ReadNetworkFiles,
		timeout:      time.Duration(cfg.CaptureTimeout),
		light:        c.v.light,
		meta:         c.v.meta,
		signal:       c.m.Signal,
		nsPID:        c.req.NSPID,
		logTail:      c.cfg.Identity.LogTail.Bytes,
	}
	if c.when == answerOnStack && !c.v.keep {
		held := &heldFiles{}
		c.files.w = held
		c.files.start()
		exited := c.refuseBeforeDump()
		c.letGo()
		exited(refusedExitWait)
		if err := c.open(ctx); err != nil {
			return err
		}
		if err := held.writeTo(c.w); err != nil {
			c.warn(err.Error())
		}
		return nil
	}
	defer c.letGo()
	if err := c.open(ctx); err != nil {
		if c.o.Core != nil && !c.o.CloseRefused {
			drain(c.o.Core)
		}
		return err
	}
	c.files.w = c.w
	if c.v.keep {
		c.awaitFreeze()
	}
	c.files.start()
	if c.when == answerOnStack {
		c.keepBeforeDump()
	}
	c.stream()
	c.files.wait()
	return nil
}

// refuseBeforeDump answers a crash refused before its dump: what the
// bundle keeps of the process is read while the kernel still holds it,
// then it is let go with nothing dumped. It returns the wait for the
// process's exit: the bundle is written once the process is gone, for its
// exit frees its memory (milliseconds for a large one), and the bundle's
// writes would take the node's CPUs from it.
func (c *crash) refuseBeforeDump() (exited func(time.Duration)) {
	c.files.wait()
	c.cs.truncate(c.cs.limitReason)
	exited = exitOf(c.req.PID)
	if err := c.answer(false); err != nil {
		c.warn(err.Error())
	}
	c.released = time.Now()
	return exited
}

// keepBeforeDump answers a crash kept before its dump; when the kernel
// takes no answer it dumps nothing, and the record says so.
func (c *crash) keepBeforeDump() {
	if err := c.answer(true); err != nil {
		c.warn(err.Error())
		c.v = c.v.unanswered()
		c.cs = newCoreStream(c.v.limit, c.v.reason, zstdLevel(c.cfg.Collect.Compression))
		c.cs.truncate(c.v.reason)
		return
	}
	c.pipe = &stallReader{f: c.o.Core, stall: time.Duration(c.cfg.Collect.CaptureTimeout)}
}

// stream reads the core to its end: into the bundle when it is kept, else
// at pipe speed to nothing, or (the agent's intakes) not at all: closing
// stops the kernel's dump, so a refused core costs what was read of its
// head.
func (c *crash) stream() {
	if c.v.keep {
		var err error
		if c.coreFile, err = c.w.Create(bundle.CoreFile); err != nil {
			c.warn(fmt.Sprintf("create %s: %v", bundle.CoreFile, err))
			c.cs.truncate(bundle.ReasonError)
		}
	}
	switch {
	case c.v.keep:
		c.readErr = c.cs.run(io.MultiReader(bytes.NewReader(c.head), c.pipe), c.coreFile)
	case c.o.Core == nil:
	case c.o.CloseRefused:
		c.cs.drainHead(c.head)
		c.o.Core.Close()
	default:
		c.readErr = c.cs.drain(c.head, c.pipe)
	}
}

// letGo ends the collection's hold on the crashed process: everything
// that needs it is done, so the kernel may release it (it waits for the
// pipe's last reader, not for our exit), and its container may run again.
func (c *crash) letGo() {
	if c.o.Core != nil {
		c.o.Core.Close()
	}
	c.held = heldFor(c.start, c.released, time.Now())
	if c.agent == nil || !thawAfter(c.agent.Freeze, c.agent.FreezePending) {
		return
	}
	if resp, err := c.o.Agent.Release(c.req.PID); err != nil {
		c.o.Log.Warn("ask the agent to thaw", zap.Error(err))
	} else if resp.Freeze != nil {
		c.agent.Freeze, c.agent.FreezePending = resp.Freeze, false
	}
}

// awaitFreeze takes the freeze's record when the crash was decided while
// the freeze went on: a kept core's capture reads the container's files
// once its container is frozen, as the freeze is there for.
func (c *crash) awaitFreeze() {
	if c.agent == nil || !c.agent.FreezePending {
		return
	}
	resp, err := c.o.Agent.Lookup(c.req.PID, lookupWait, false)
	if err != nil {
		c.o.Log.Warn("the freeze's record from the agent", zap.Error(err))
		return
	}
	c.agent.Freeze, c.agent.FreezePending = resp.Freeze, false
}

// submit completes the metadata, publishes the bundle and reports it to
// the agent.
func (c *crash) submit(ctx context.Context) error {
	c.finishCore()
	c.record()
	c.describe()
	c.m.Collector = bundle.Collector{
		Version:         c.o.Version,
		HeldSeconds:     c.held.Seconds(),
		DurationSeconds: time.Since(c.start).Seconds(),
		Missing:         c.m.Collector.Missing,
	}
	if c.helper {
		// The process's own figures are one crash's only in a helper;
		// the agent's are in its metrics.
		c.m.Collector.MaxRSSBytes, c.m.Collector.CPUSeconds = usage()
		c.m.Collector.DiskWriteBytes = diskWrites()
	}
	// The agent runs gdb on a stored core once it is published (gdb lives
	// in the agent's image, not necessarily on the host the helper runs
	// on); until then the analysis says so.
	_, updatable := c.o.Store.(store.Updater)
	pending, reason := analysisState(c.v.keep, c.m.Core.StoredBytes, c.cfg.Analysis.GDB, c.agent != nil, updatable)
	c.m.Analysis.Pending = pending
	if reason != "" {
		c.m.Analysis.Reason = reason
	}
	if err := c.w.Commit(ctx, c.m); err != nil {
		return fmt.Errorf("publish bundle %s in %s: %w", c.m.ID, c.o.Store, err)
	}
	c.committed = true
	if err := c.o.Agent.Report(c.m); err != nil {
		c.o.Log.Warn("report the bundle to the agent", zap.Error(err))
	}
	return nil
}

// finishCore ends the core's stream and records it, with why it is cut.
func (c *crash) finishCore() {
	if freed := c.cs.freedIDs(); len(freed) > 0 {
		c.o.Log.Info("deleted the oldest bundles to make room", zap.Strings("ids", freed))
	}
	core, err := c.cs.finish()
	if err != nil {
		c.warn(err.Error())
	}
	if c.coreFile != nil {
		if err := c.coreFile.Close(); err != nil {
			c.warn(fmt.Sprintf("close %s: %v", bundle.CoreFile, err))
			core.Truncated, core.TruncateReason = true, writeReason(err)
		}
	}
	if c.readErr != nil {
		core.Truncated = true
		if core.TruncateReason == "" {
			core.TruncateReason = bundle.ReasonError
		}
		c.warn(c.readErr.Error())
	}
	core.RlimitCore = c.req.RlimitCore
	c.m.Core = core
}

// record puts what the capture read and the agent said into the metadata.
func (c *crash) record() {
	m, f := c.m, c.files
	m.NSPID, m.Cmdline = f.nsPID, f.cmdline
	if f.exe != nil {
		m.Exe, m.ExeRaw = bundle.Text(f.exe)
	}
	m.Files = f.files
	m.Warnings = append(m.Warnings, f.warnings...)
	m.Collector.Missing = append(m.Collector.Missing, f.missing...)
	if c.agent != nil {
		if ev := c.agent.Event; ev != nil {
			ev.LatencyMS = float64(c.start.Sub(ev.Time).Microseconds()) / 1000
			m.EBPF = ev
		}
		m.Freeze = c.agent.Freeze
	}
}

// describe stores the container's log tail and names the crash: what the
// runtime wrote of its crash (a JVM's error log, a panic or a JavaScript
// stack in the log) names it better than its frames.
func (c *crash) describe() {
	m := c.m
	tail, err := c.ident.LogTail(c.cfg.Identity.LogTail.Bytes)
	if err != nil {
		c.warn(fmt.Sprintf("container log: %v", err))
	} else if len(tail) > 0 {
		if err := put(c.w.Create, bundle.ContainerLog, bytes.NewReader(tail)); err != nil {
			c.warn(fmt.Sprintf("store container log: %v", err))
		}
	}
	if len(tail) == 0 {
		tail = c.files.stderr
	}
	clues := analysis.Clues{HsErr: c.files.hsErr, Log: tail}
	m.Title = analysis.Describe(m.SignalName, m.Backtrace, clues)
	m.Analysis.Script = analysis.Script(clues)
}

// cleanStale clears the temporary bundles of collections that died, before
// this one starts its own.
func (c *crash) cleanStale() {
	if c.local == nil {
		return
	}
	if err := c.local.CleanStale(); err != nil {
		c.warn(fmt.Sprintf("clean stale temporary bundles: %v", err))
	}
}

// vacuumBefore applies retention before the core is written, and bounds
// the room the core and the captured files may take. The kernel waits on
// the pipe meanwhile: this only stats the store. A light bundle (a core
// refused) bounds nothing, and is vacuumed only once written: its crash is
// let go without the store's filesystem being asked.
func (c *crash) vacuumBefore(ctx context.Context) {
	if c.local == nil || c.v.light {
		return
	}
	c.retention = RetentionFor(c.o.Retention, c.local)
	sp, err := c.local.Space(ctx, c.retention)
	if err == nil {
		_, err = sp.Vacuum(ctx)
		c.cs.space = sp
	}
	if err != nil {
		c.o.Log.Warn("retention before writing", zap.Error(err))
	}
}

// vacuum applies retention once the bundle is published, sparing it.
func (c *crash) vacuum(ctx context.Context) {
	if c.local == nil {
		return
	}
	if c.v.light {
		c.retention = RetentionFor(c.o.Retention, c.local)
	}
	if _, err := c.local.Vacuum(ctx, c.retention, c.m.ID); err != nil {
		c.o.Log.Warn("retention after writing", zap.Error(err))
	}
}
