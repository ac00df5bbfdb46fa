package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/observer"
	"github.com/corecatch/corecatch/pkg/proc"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
)

// missing makes sure no crash the observer saw is silently lost: a process
// that died of a core signal and whose bundle was not reported within
// observer.missing_after of its exit gets a metadata-only bundle that says
// so (core.truncate_reason "missing").
type missing struct {
	store store.Store
	after time.Duration
	node  string
	log   *zap.Logger
	// freezeCgroup returns the cgroup a crash's freeze recorded, if any:
	// the process is gone by the time its bundle is written.
	freezeCgroup func(pid int) string
	storeOp      func(op string, err error)
	// published counts and announces the bundle like any other.
	published func(*bundle.Metadata)

	// records keeps each pending crash in a file of its own, so that a
	// restarted agent still records the crashes its predecessor was
	// waiting for.
	records *spool.Missing

	mu      sync.Mutex
	pending map[int]*pendingCore
	// reportedAt is when each pid's last bundle was reported
	// (CLOCK_MONOTONIC, as events are timed), so that a core event the
	// watcher reads only after its crash's bundle came (a storm delays
	// the watcher) is not waited for again; a later crash of a reused
	// pid is timed after it.
	reportedAt map[int]time.Duration
}

type pendingCore struct {
	ev    observer.Event
	timer *time.Timer
}

// persisted is a pending crash on disk: its core event, and its exit once
// seen.
type persisted struct {
	Event   observer.Event
	Exited  time.Time
	Outcome string
}

// save writes a pending crash's file (under x.mu).
func (x *missing) save(pid int, rec persisted) {
	if err := x.records.Put(pid, rec); err != nil {
		x.log.Warn("persist a crash waiting for its bundle", zap.Int("pid", pid), zap.Error(err))
	}
}

// resume takes the crashes a previous agent was waiting for: each gets
// what is left of its grace period from its exit (or from now, when the
// exit was not seen).
func (x *missing) resume() {
	for _, pid := range x.records.PIDs() {
		var rec persisted
		if err := x.records.Get(pid, &rec); err != nil {
			x.records.Remove(pid)
			continue
		}
		x.mu.Lock()
		p := &pendingCore{ev: rec.Event}
		x.pending[pid] = p
		// This agent's observer never saw the crash, so no exit event
		// will come: the grace period runs from the exit, or from now.
		wait := x.after
		if !rec.Exited.IsZero() {
			wait = max(0, time.Until(rec.Exited.Add(x.after)))
		}
		outcome := rec.Outcome
		p.timer = time.AfterFunc(wait, func() { x.record(pid, outcome) })
		x.mu.Unlock()
	}
}

// forgetAfter drops a core event whose exit was never seen (its exit event
// was lost), so that the pending set stays bounded.
const forgetAfter = time.Hour

// core notes a core event, on disk before the crash's collection can
// take it (the caller adds it to the events after): a bundle should
// follow, and a worker that dies meanwhile leaves it to the next.
func (x *missing) core(ev observer.Event) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for pid, p := range x.pending {
		if p.timer == nil && time.Since(p.ev.Time) > forgetAfter {
			delete(x.pending, pid)
			x.forget(pid)
		}
	}
	if t, ok := x.reportedAt[ev.TGID]; ok && ev.Monotonic < t {
		return
	}
	if old := x.pending[ev.TGID]; old != nil && old.timer != nil {
		old.timer.Stop()
	}
	x.pending[ev.TGID] = &pendingCore{ev: ev}
	x.save(ev.TGID, persisted{Event: ev})
}

// taken notes a crash an intake took before its eBPF event was read (the
// worker busy, or its observer started after the signal), so that a
// worker killed during the collection still leaves it to the next: its
// pid, its name and now stand in for the event until that comes.
func (x *missing) taken(pid int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.pending[pid] != nil {
		return
	}
	comm, _ := proc.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	ev := observer.Event{Kind: observer.KindCore, TGID: pid, Time: time.Now(), Comm: strings.TrimSuffix(string(comm), "\n")}
	x.pending[pid] = &pendingCore{ev: ev}
	x.save(pid, persisted{Event: ev})
}

// exit starts the grace period once the process is gone.
func (x *missing) exit(ev observer.Event) {
	x.mu.Lock()
	defer x.mu.Unlock()
	p := x.pending[ev.TGID]
	if p == nil || p.timer != nil {
		return
	}
	outcome := ev.Outcome
	p.timer = time.AfterFunc(x.after, func() { x.record(ev.TGID, outcome) })
	x.save(ev.TGID, persisted{Event: p.ev, Exited: time.Now(), Outcome: outcome})
}

// reported cancels the wait: the bundle arrived.
func (x *missing) reported(pid int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	now := monotonic()
	if len(x.reportedAt) >= maxReported {
		for p, t := range x.reportedAt {
			if now-t > time.Minute {
				delete(x.reportedAt, p)
			}
		}
	}
	if x.reportedAt == nil {
		x.reportedAt = map[int]time.Duration{}
	}
	x.reportedAt[pid] = now
	if p := x.pending[pid]; p != nil {
		if p.timer != nil {
			p.timer.Stop()
		}
		delete(x.pending, pid)
		x.forget(pid)
	}
}

// maxReported is how many reports reported keeps before it drops those
// older than a minute (a watcher is never that late).
const maxReported = 1024

// monotonic is CLOCK_MONOTONIC, the clock of observer.Event.Monotonic.
func monotonic() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// forget removes a pending crash's file.
func (x *missing) forget(pid int) { x.records.Remove(pid) }

// record writes the metadata-only bundle of a crash whose core never came.
func (x *missing) record(pid int, outcome string) {
	x.mu.Lock()
	p := x.pending[pid]
	delete(x.pending, pid)
	x.mu.Unlock()
	if p == nil {
		return
	}
	defer x.forget(pid)
	ev := p.ev
	m := &bundle.Metadata{
		Schema: bundle.Schema, ID: bundle.NewID(ev.Time, []byte(ev.Comm)), Time: ev.Time.Truncate(time.Second), Node: x.node,
		PID: ev.TGID, NSPID: ev.NSPID, TID: ev.TID, Signal: ev.Signal, SignalName: bundle.SignalName(ev.Signal),
		EBPF: ev.Bundle(), Cgroup: x.freezeCgroup(pid),
		Core: bundle.Core{Truncated: true, TruncateReason: bundle.ReasonMissing, RlimitCore: -1},
	}
	m.Comm, m.CommRaw = bundle.Text([]byte(ev.Comm))
	if m.Node == "" {
		m.Node, _ = os.Hostname()
	}
	why := "the kernel dumped no core: the dump was skipped (core_pipe_limit reached, a non-dumpable process, RLIMIT_CORE of 1) or the process was killed during it"
	if outcome == observer.OutcomeCoreDumped {
		why = "the kernel dumped a core, but no bundle arrived: the helper failed (see dmesg)"
	}
	m.Warnings = []string{why}
	ctx := context.Background()
	w, err := x.store.Put(ctx, m.ID)
	if err == nil {
		if err = w.Commit(ctx, m); err != nil {
			w.Abort()
		}
	}
	x.storeOp("put", err)
	if err != nil {
		x.log.Error("record a crash without a core", zap.Int("pid", pid), zap.Error(err))
		return
	}
	x.log.Warn("crash without a core", zap.String("id", m.ID), zap.Int("pid", pid), zap.String("comm", ev.Comm),
		zap.String("signal", m.SignalName), zap.String("why", why))
	x.published(m)
}
