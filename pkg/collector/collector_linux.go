// Package collector is the core_pattern pipe helper: the kernel starts it once
// per core dump, with the core on stdin and the crashed process held until the
// helper lets go of the pipe. It streams the core through zstd into a store
// and, meanwhile, captures what only the still-present process can give.
package collector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/agentapi"
	"github.com/corecatch/corecatch/pkg/analysis"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/identity"
	"github.com/corecatch/corecatch/pkg/store"
)

// How long the helper waits for the agent: for the eBPF event (which
// normally is there already), and to take its report.
const (
	lookupWait    = 300 * time.Millisecond
	reportTimeout = time.Second
)

// PatternArgs are the core_pattern specifiers the helper takes, in the order
// Request parses them. %e comes last: it is the only one that can be empty
// or hold spaces (the kernel splits the pattern before expanding it, so it
// stays one argument).
const PatternArgs = "%P %I %s %t %c %d %u %g %e"

// Request is what the kernel says about one crash, from PatternArgs.
type Request struct {
	PID, TID   int
	Signal     int
	Time       time.Time
	RlimitCore int64 // -1: unlimited
	Dumpable   int
	UID, GID   int
	Comm       []byte
}

// ParseRequest reads the expanded PatternArgs.
func ParseRequest(args []string) (Request, error) {
	if len(args) < 8 {
		return Request{}, fmt.Errorf("collect takes the kernel's %q (got %d arguments); it is meant to be run by the kernel: use `corecatch install`", PatternArgs, len(args))
	}
	num := func(i int, name string) (int64, error) {
		n, err := strconv.ParseInt(args[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("collect: %s %q is not a number", name, args[i])
		}
		return n, nil
	}
	var r Request
	var errs []error
	get := func(i int, name string) int {
		n, err := num(i, name)
		if err != nil {
			errs = append(errs, err)
		}
		return int(n)
	}
	r.PID, r.TID, r.Signal = get(0, "pid"), get(1, "tid"), get(2, "signal")
	r.Time = time.Unix(int64(get(3, "time")), 0).UTC()
	r.Dumpable, r.UID, r.GID = get(5, "dumpable"), get(6, "uid"), get(7, "gid")
	if lim, err := strconv.ParseUint(args[4], 10, 64); err != nil {
		errs = append(errs, fmt.Errorf("collect: rlimit %q is not a number", args[4]))
	} else if lim > math.MaxInt64 {
		r.RlimitCore = -1
	} else {
		r.RlimitCore = int64(lim)
	}
	if len(args) > 8 {
		r.Comm = []byte(strings.Join(args[8:], " "))
	}
	if len(errs) > 0 {
		return r, errs[0]
	}
	return r, nil
}

// Options configure one Run.
type Options struct {
	Config *config.Config
	// Store receives the bundle; with a local store (the configured one,
	// or the outbox of an S3 store) Retention bounds it.
	Store     store.Store
	Retention config.Retention
	Request   Request
	// Core is the pipe the kernel writes the core into (stdin).
	Core    *os.File
	Log     *zap.Logger
	Version string
	// Claimer, when set, makes deduplication cluster-wide: the first crash
	// of a bug in a window on any node keeps the core (an S3 store that
	// honours conditional writes; see ClusterMarker).
	Claimer Claimer
	// Agent is how the collection reaches the agent; nil: over its socket
	// (cfg.Socket), as the kernel-run helper does.
	Agent Link
	// Answer, when set, is the intake that must be told before the first
	// byte of the core is read whether it is kept (the coredump socket's
	// answer): with Stack, the decision is made on the eBPF event's stack
	// before the kernel dumps anything, and a refused core never streams;
	// without, Answer(true) comes first and a refused core's stream is
	// closed as soon as it is decided. Core is nil until Answer(true)
	// returns.
	Answer func(keep bool) error
	// Stack is the crash's user stack from the eBPF event (PC first).
	Stack []uint64
	// CloseRefused closes a refused core's stream at once instead of
	// draining it (the kernel stops dumping); the agent's intakes set it.
	CloseRefused bool
	// OpenCore, for Answer's intake, opens the core once it is to be read.
	OpenCore func() (*os.File, error)
	// Refuse, when set, is the reason the core is not kept whatever the
	// crash (the agent's backlog is full: bundle.ReasonBusy).
	Refuse string
}

// Link is the agent's side of a collection: the eBPF event and freeze of a
// crash, the thaw once its process is let go, and the bundle's report.
type Link interface {
	Lookup(pid int, wait time.Duration) (*agentapi.Response, error)
	Release(pid int) (*agentapi.Response, error)
	Report(m *bundle.Metadata) error
}

// socketLink reaches the agent over its unix socket, with short deadlines:
// the kernel-run helper never waits long for an agent that may be down.
type socketLink struct{ socket, spool string }

func (l socketLink) Lookup(pid int, wait time.Duration) (*agentapi.Response, error) {
	return agentapi.Lookup(l.socket, pid, wait)
}

func (l socketLink) Release(pid int) (*agentapi.Response, error) {
	return agentapi.Release(l.socket, pid, reportTimeout)
}

func (l socketLink) Report(m *bundle.Metadata) error {
	return agentapi.Report(l.socket, l.spool, m, reportTimeout)
}

// Claimer makes one crash the holder of a bug's window across nodes
// (store.S3.Claim).
type Claimer interface {
	Claim(ctx context.Context, key string, window time.Duration, id string, now time.Time) (string, error)
}

// Run collects one crash into one bundle. It returns the published
// metadata. Whatever fails, it reads the core pipe to its end or closes it,
// so the kernel never waits on a dead helper.
func Run(ctx context.Context, o Options) (*bundle.Metadata, error) {
	start := time.Now()
	req, cfg := o.Request, o.Config
	helper := o.Agent == nil // a process of its own, run by the kernel
	if helper {
		o.Agent = socketLink{cfg.Socket, cfg.Spool}
	}
	answered := false
	answer := func(keep bool) error {
		if answered || o.Answer == nil {
			return nil
		}
		answered = true
		if err := o.Answer(keep); err != nil {
			return err
		}
		if keep && o.Core == nil {
			f, err := o.OpenCore()
			if err != nil {
				return err
			}
			o.Core = f
		}
		return nil
	}
	defer func() {
		answer(false) // a collection that failed early dumps nothing
		if o.Core != nil {
			o.Core.Close()
		}
	}()
	early := o.Answer != nil && len(o.Stack) > 0
	if o.Answer != nil && !early {
		// No stack to decide on: take the core, decide on its head.
		if err := answer(true); err != nil {
			return nil, fmt.Errorf("take the core of pid %d: %w", req.PID, err)
		}
	}
	if o.Core != nil {
		enlargePipe(o.Core)
	}

	req.Comm = taskComm(req)
	id := bundle.NewID(req.Time, req.Comm)
	m := &bundle.Metadata{
		Schema: bundle.Schema, ID: id, Time: req.Time, Node: cfg.Node,
		PID: req.PID, TID: req.TID, UID: req.UID, GID: req.GID,
		Signal: req.Signal, SignalName: bundle.SignalName(req.Signal), Dumpable: req.Dumpable,
	}
	m.Comm, m.CommRaw = bundle.Text(req.Comm)
	if m.Node == "" {
		m.Node, _ = os.Hostname()
	}

	local, _ := o.Store.(*store.File)
	if local != nil {
		if err := local.CleanStale(); err != nil {
			m.Warnings = append(m.Warnings, fmt.Sprintf("clean stale temporary bundles: %v", err))
		}
	}
	w, err := o.Store.Put(ctx, id)
	if err != nil {
		if o.Core != nil && !o.CloseRefused {
			drain(o.Core)
		}
		return nil, fmt.Errorf("start bundle in %s: %w", o.Store, err)
	}
	committed := false
	defer func() {
		if !committed {
			w.Abort()
		}
	}()

	limit, limitReason := int64(-1), bundle.ReasonMaxCoreBytes
	if cfg.Collect.MaxCoreBytes.Bytes > 0 {
		limit = cfg.Collect.MaxCoreBytes.Bytes
	}
	if cfg.Collect.HonorRlimit && req.RlimitCore >= 0 && (limit < 0 || req.RlimitCore < limit) {
		limit, limitReason = req.RlimitCore, bundle.ReasonRlimit
	}
	cs := newCoreStream(limit, limitReason, zstdLevel(cfg.Collect.Compression))

	var wg sync.WaitGroup
	// The agent's record of the signal, and what it did to the container.
	// It arrived before the core started (the observer runs in the dying
	// task before do_coredump), so a short wait suffices; without an agent
	// the helper goes on alone.
	var agentResp *agentapi.Response
	wg.Go(func() {
		resp, err := o.Agent.Lookup(req.PID, lookupWait)
		if err != nil {
			if !errors.Is(err, agentapi.ErrNoAgent) {
				o.Log.Warn("no eBPF event from the agent", zap.Error(err))
			}
			return
		}
		agentResp = resp
	})
	// Where it crashed, from the core's first bytes and the live process,
	// before a byte of the core is kept: a known bug's core is not.
	// Every read of the pipe gives up after collect.capture_timeout
	// without a byte: the kernel's dump can block on the crasher's files.
	var pipe *stallReader
	stall := time.Duration(cfg.Collect.CaptureTimeout)
	if o.Core != nil {
		pipe = &stallReader{f: o.Core, stall: stall}
	}
	// The walk, and later the capture, each read the crasher's memory
	// and files for at most collect.capture_timeout.
	var head []byte
	var quick analysis.Result
	var walked bool
	if early {
		quick, walked = liveWalk(req.PID, m.SignalName, func() analysis.Result { return analysis.LiveStack(req.PID, m.SignalName, o.Stack) }, stall)
	} else {
		var regs analysis.Regs
		var regsErr error
		head, regs, regsErr = readHead(pipe)
		if m.Signal == 0 && regs.Signal > 0 {
			m.Signal, m.SignalName = regs.Signal, bundle.SignalName(regs.Signal)
		}
		quick, walked = liveWalk(req.PID, m.SignalName, func() analysis.Result { return analysis.Live(req.PID, m.SignalName, regs, regsErr) }, stall)
	}
	if !walked {
		m.Collector.Missing = append(m.Collector.Missing, "the frame-pointer walk")
	}
	m.Backtrace, m.Title, m.Signature = quick.Frames, quick.Title, quick.Signature
	m.Analysis = &bundle.Analysis{Unwinder: "frame-pointers", Reason: quick.Reason, Warnings: quick.Warnings}
	wg.Wait()
	// Whose crash it is: the process's cgroup (or the one the agent froze
	// it in) names its container, the runtime the rest. Cached per
	// container in the spool, so a storm asks the runtime once.
	cgroup, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", req.PID))
	m.Cgroup = identity.ProcCgroup(cgroup)
	if agentResp != nil && agentResp.Freeze != nil && agentResp.Freeze.Cgroup != "" {
		m.Cgroup = agentResp.Freeze.Cgroup
	}
	ident := identity.Resolve(ctx, m.Cgroup, cfg.Identity.CRIEndpoint, time.Duration(cfg.Identity.Timeout), identity.SpoolCache(cfg.Spool))
	m.Container, m.Pod, m.Workload = ident.Container, ident.Pod, ident.Workload
	m.IdentitySource, m.IdentityReason = ident.Source, ident.Reason

	keep, light := limit != 0, false
	if pol := cfg.Pods.Policy(m.Pod.Scope()); keep && !pol.Collect {
		// The pod said no core (secrets in its memory): metadata and the
		// backtrace only.
		keep, light, cs = false, true, newCoreStream(0, bundle.ReasonPodPolicy, zstdLevel(cfg.Collect.Compression))
		m.Warnings = append(m.Warnings, "core not kept: "+pol.Why)
	}
	if keep {
		reason := o.Refuse
		if reason == "" {
			reason = stormReason(ctx, cfg, o.Claimer, m, quick.ExeID)
		}
		if reason == "" {
			slot, ok := takeSlot(cfg.Spool, cfg.Collect.MaxConcurrent)
			if ok {
				defer slot.Close()
			} else {
				reason = bundle.ReasonRateLimit
			}
		}
		if reason != "" {
			keep, light, cs = false, true, newCoreStream(0, reason, zstdLevel(cfg.Collect.Compression))
		}
	}
	retention := RetentionFor(o.Retention, local)
	if local != nil && !light {
		// Retention before writing, and the room the core and the
		// captured files may take. The kernel waits on the pipe
		// meanwhile: this only stats the store.
		sp, err := local.Space(ctx, retention)
		if err == nil {
			_, err = sp.Vacuum(ctx)
			cs.space = sp
		}
		if err != nil {
			o.Log.Warn("retention before writing", zap.Error(err))
		}
	}
	cap := &capture{
		proc:         fmt.Sprintf("/proc/%d", req.PID),
		w:            w,
		maxFileBytes: cfg.Collect.MaxFileBytes.Bytes,
		budget:       cfg.Collect.MaxFilesTotalBytes.Bytes,
		charge:       cs.charge,
		withEnviron:  cfg.Collect.CaptureEnviron,
		readNetwork:  cfg.Collect.ReadNetworkFiles,
		timeout:      time.Duration(cfg.Collect.CaptureTimeout),
		light:        light,
		logTail:      cfg.Identity.LogTail.Bytes,
	}
	var released time.Time
	if early && !keep {
		// Refused before the dump: what the bundle keeps of the process
		// is read into memory while the kernel still holds it, then it
		// is let go, and only then written.
		held := &heldFiles{}
		cap.w = held
		cap.start()
		cap.wait()
		cs.truncate(cs.limitReason)
		if err := answer(false); err != nil {
			m.Warnings = append(m.Warnings, err.Error())
		}
		released = time.Now()
		if err := held.writeTo(w); err != nil {
			m.Warnings = append(m.Warnings, err.Error())
		}
	} else {
		cap.start()
	}
	if early && keep {
		if err := answer(true); err != nil {
			// The kernel took no answer: it dumps nothing.
			m.Warnings = append(m.Warnings, err.Error())
			keep = false
			cs = newCoreStream(0, bundle.ReasonError, zstdLevel(cfg.Collect.Compression))
			cs.truncate(bundle.ReasonError)
		} else {
			pipe = &stallReader{f: o.Core, stall: stall}
		}
	}

	var coreFile io.WriteCloser
	if keep {
		if coreFile, err = w.Create(bundle.CoreFile); err != nil {
			m.Warnings = append(m.Warnings, fmt.Sprintf("create %s: %v", bundle.CoreFile, err))
			cs.truncate(bundle.ReasonError)
		}
	}
	var readErr error
	switch {
	case keep:
		readErr = cs.run(io.MultiReader(bytes.NewReader(head), pipe), coreFile)
	case o.Core == nil:
	case o.CloseRefused:
		// Closing stops the kernel's dump: a refused core costs what
		// was read of its head.
		cs.drainHead(head)
		o.Core.Close()
	default:
		readErr = cs.drain(head, pipe)
	}
	cap.wait()
	// Everything that needs the crashed process is done: let the kernel
	// release it (it waits for the pipe's last reader, not for our exit).
	if o.Core != nil {
		o.Core.Close()
	}
	held := time.Since(start)
	if !released.IsZero() {
		held = released.Sub(start)
	}
	if agentResp != nil && agentResp.Freeze != nil && agentResp.Freeze.Frozen {
		// The container may run again: what it could change is captured.
		if resp, err := o.Agent.Release(req.PID); err != nil {
			o.Log.Warn("ask the agent to thaw", zap.Error(err))
		} else if resp.Freeze != nil {
			agentResp.Freeze = resp.Freeze
		}
	}

	if freed := cs.freedIDs(); len(freed) > 0 {
		o.Log.Info("deleted the oldest bundles to make room", zap.Strings("ids", freed))
	}
	core, err := cs.finish()
	if err != nil {
		m.Warnings = append(m.Warnings, err.Error())
	}
	if coreFile != nil {
		if err := coreFile.Close(); err != nil {
			m.Warnings = append(m.Warnings, fmt.Sprintf("close %s: %v", bundle.CoreFile, err))
			core.Truncated, core.TruncateReason = true, writeReason(err)
		}
	}
	if readErr != nil {
		core.Truncated = true
		if core.TruncateReason == "" {
			core.TruncateReason = bundle.ReasonError
		}
		m.Warnings = append(m.Warnings, readErr.Error())
	}
	core.RlimitCore = req.RlimitCore
	m.Core = core

	m.NSPID, m.Cmdline = cap.nsPID, cap.cmdline
	if cap.exe != nil {
		m.Exe, m.ExeRaw = bundle.Text(cap.exe)
	}
	m.Files = cap.files
	m.Warnings = append(m.Warnings, cap.warnings...)
	m.Collector.Missing = append(m.Collector.Missing, cap.missing...)
	if agentResp != nil {
		if ev := agentResp.Event; ev != nil {
			ev.LatencyMS = float64(start.Sub(ev.Time).Microseconds()) / 1000
			m.EBPF = ev
		}
		m.Freeze = agentResp.Freeze
	}

	tail, err := ident.LogTail(cfg.Identity.LogTail.Bytes)
	if err != nil {
		m.Warnings = append(m.Warnings, fmt.Sprintf("container log: %v", err))
	} else if len(tail) > 0 {
		if err := put(w.Create, bundle.ContainerLog, bytes.NewReader(tail)); err != nil {
			m.Warnings = append(m.Warnings, fmt.Sprintf("store container log: %v", err))
		}
	}
	// What the runtime wrote of its crash (a JVM's error log, a panic or
	// a JavaScript stack in the log) names it better than its frames.
	if len(tail) == 0 {
		tail = cap.stderr
	}
	clues := analysis.Clues{HsErr: cap.hsErr, Log: tail}
	m.Title = analysis.Describe(m.SignalName, m.Backtrace, clues)
	m.Analysis.Script = analysis.Script(clues)

	m.Collector = bundle.Collector{
		Version:         o.Version,
		HeldSeconds:     held.Seconds(),
		DurationSeconds: time.Since(start).Seconds(),
		Missing:         m.Collector.Missing,
	}
	if helper {
		// The process's own figures are one crash's only in a helper;
		// the agent's are in its metrics.
		m.Collector.MaxRSSBytes, m.Collector.CPUSeconds = usage()
		m.Collector.DiskWriteBytes = diskWrites()
	}
	// The agent runs gdb on a stored core once it is published (gdb lives
	// in the agent's image, not necessarily on the host the helper runs
	// on); until then the analysis says so.
	_, updatable := o.Store.(store.Updater)
	switch {
	case !keep || m.Core.StoredBytes == 0:
	case cfg.Analysis.GDB == "":
		m.Analysis.Reason = "the full unwind is off (analysis.gdb)"
	case agentResp == nil:
		m.Analysis.Reason = "no agent ran to unwind the core with gdb"
	case !updatable:
		m.Analysis.Reason = "the store cannot amend metadata"
	default:
		m.Analysis.Pending = true
	}
	if err := w.Commit(ctx, m); err != nil {
		return nil, fmt.Errorf("publish bundle %s in %s: %w", id, o.Store, err)
	}
	committed = true
	if err := o.Agent.Report(m); err != nil {
		o.Log.Warn("report the bundle to the agent", zap.Error(err))
	}
	if local != nil {
		if _, err := local.Vacuum(ctx, retention, id); err != nil {
			o.Log.Warn("retention after writing", zap.Error(err))
		}
	}
	return m, nil
}

// taskComm returns the crashing thread's exact name. The kernel escapes %e
// ('/' and a leading '.' become '!'), so the name is read from
// /proc/PID/task/TID/comm, and %e serves only when that fails.
func taskComm(req Request) []byte {
	tid := req.TID
	if tid == 0 {
		tid = req.PID
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", req.PID, tid))
	if err != nil || len(data) == 0 {
		return req.Comm
	}
	return bytes.TrimSuffix(data, []byte("\n"))
}

// RetentionFor turns configured bounds, which may be percentages of the
// store's filesystem, into bytes.
func RetentionFor(bounds config.Retention, local *store.File) store.Retention {
	r := store.Retention{MaxAge: time.Duration(bounds.MaxAge)}
	var total int64
	if local != nil {
		var st unix.Statfs_t
		if os.MkdirAll(local.Root(), 0o755) == nil && unix.Statfs(local.Root(), &st) == nil {
			total = int64(st.Blocks) * st.Bsize
		}
	}
	r.MaxUse = bounds.MaxUse.Of(total)
	r.KeepFree = bounds.KeepFree.Of(total)
	return r
}

func zstdLevel(name string) zstd.EncoderLevel {
	switch name {
	case "default":
		return zstd.SpeedDefault
	case "better":
		return zstd.SpeedBetterCompression
	}
	return zstd.SpeedFastest
}

// enlargePipe grows the kernel's pipe to one read's worth, so the kernel
// blocks less often on a helper that is busy compressing.
func enlargePipe(f *os.File) {
	unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, chunk)
}

// drain reads the pipe to its end: the fallback when nothing can be kept.
func drain(f *os.File) {
	buf := make([]byte, chunk)
	for {
		if _, err := f.Read(buf); err != nil {
			return
		}
	}
}

// usage returns this process's peak RSS and its CPU time so far.
func usage() (rss int64, cpu float64) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0, 0
	}
	cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	return ru.Maxrss * 1024, cpu
}

// diskWrites returns write_bytes of /proc/self/io: what this process caused
// to be sent to storage.
func diskWrites() int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("write_bytes: ")); ok {
			n, _ := strconv.ParseInt(string(v), 10, 64)
			return n
		}
	}
	return 0
}
