package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/freezer"
	"github.com/corecatch/corecatch/pkg/identity"
	"github.com/corecatch/corecatch/pkg/observer"
	"github.com/corecatch/corecatch/pkg/proc"
	"github.com/corecatch/corecatch/pkg/spool"
)

// freezeTimeout bounds how long one freeze may take before it is given up
// (and the cgroup thawed): a container that cannot freeze quickly is left
// running rather than held half-frozen.
const freezeTimeout = 2 * time.Second

// NewFreezer builds the freezer the configuration asks for: its policy is
// the built-in one plus freeze.allow and freeze.deny, and the agent's own
// cgroup is never frozen. It records what it freezes in the spool (Frozen).
func NewFreezer(cfg *config.Config) (*freezer.Freezer, error) {
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	p := freezer.DefaultPolicy(identity.ProcCgroup(self))
	for _, e := range cfg.Freeze.Allow {
		p.Allow = append(p.Allow, regexp.MustCompile(e)) // validated with the config
	}
	for _, e := range cfg.Freeze.Deny {
		p.Deny = append(p.Deny, regexp.MustCompile(e))
	}
	return freezer.New(freezer.Options{StateDir: spool.Open(cfg.Spool).Frozen(), Policy: p})
}

// podFreeze says whether the pod of the container in a cgroup may be
// frozen (config.Pods and its corecatch.io/freeze annotation, from the CRI,
// with the identity cache the helper then reuses).
func podFreeze(cfg *config.Config) func(string) (bool, string) {
	return func(cgroup string) (bool, string) {
		id := identity.Resolve(context.Background(), cgroup, cfg.Identity.CRIEndpoint, time.Duration(cfg.Identity.Timeout),
			identity.SpoolCache(spool.Open(cfg.Spool)))
		pol := cfg.Pods.Policy(id.Pod.Scope())
		return pol.Freeze, pol.Why
	}
}

// freezeState is one crash's freeze, from the core event to the thaw.
type freezeState struct {
	done chan struct{} // closed once the freeze attempt ended
	// known is closed once the crasher's cgroup was read (cgroup, "":
	// the process was gone), before the freeze moves it to the holding
	// cgroup: a collection decides on that cgroup without waiting for
	// the freeze.
	known  chan struct{}
	cgroup string
	// letGo is set once the crash's collection let its process go (thaw):
	// a freeze not begun by then would hold the container for nothing.
	letGo  atomic.Bool
	signal time.Time // the signal's time, from the event
	mu     sync.Mutex
	rec    bundle.Freeze
	fr     *freezer.Frozen
	at     time.Time // when the cgroup was frozen
}

// freezes tracks the freezes of recent crashes by pid.
type freezes struct {
	f   *freezer.Freezer
	max time.Duration
	log *zap.Logger
	// allowed says whether the pod of a cgroup's container lets it be
	// frozen, and if not why.
	allowed func(cgroup string) (bool, string)

	mu    sync.Mutex
	byPID map[int]*freezeState

	// The freezes run on workers that wait in a blocking read of a pipe
	// on real-time threads of their own: the kernel wakes one at once
	// for each byte start writes. A goroutine started per freeze would
	// first wait for an ordinary thread of the Go scheduler, which busy
	// CPUs delay by tens of milliseconds.
	workers sync.Once
	wake    [2]int // the pipe: read end, write end (non-blocking)
	jobs    chan func()
}

// freezeWorkers is how many freezes may be under way at once before the
// next one waits for a worker (a freeze takes about a millisecond, at
// most freezeTimeout).
const freezeWorkers = 4

// run hands job to a freeze worker, starting them the first time. Without
// the pipe, or when it is full, job runs in a goroutine of its own.
func (z *freezes) run(job func()) {
	z.workers.Do(func() {
		z.jobs = make(chan func(), 4096)
		if err := unix.Pipe2(z.wake[:], unix.O_CLOEXEC); err != nil {
			z.log.Warn("freeze workers", zap.Error(err))
			z.wake = [2]int{-1, -1}
			return
		}
		unix.SetNonblock(z.wake[1], true)
		for range freezeWorkers {
			go z.work()
		}
	})
	if z.wake[1] >= 0 {
		select {
		case z.jobs <- job:
			if _, err := unix.Write(z.wake[1], []byte{1}); err == nil {
				return
			}
			job = <-z.jobs // not woken: take a job back, run it here
		default:
		}
	}
	go func() {
		observer.Urgent()
		job()
	}()
}

// work runs freezes, each once the pipe says one is queued.
func (z *freezes) work() {
	observer.Urgent() // watch's warning says when it is not
	var b [1]byte
	for {
		if _, err := unix.Read(z.wake[0], b[:]); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			z.log.Error("freeze worker", zap.Error(err))
			return
		}
		(<-z.jobs)()
		// What the job woke (a collection waiting for its record)
		// would wait in this locked thread's run queue while the read
		// below blocks holding it (as in startEarly); yielding hands it
		// on at once.
		runtime.Gosched()
	}
}

// start freezes the crasher's container, in the background: it is called
// by the observer's reader (Observer.OnCore), which must never wait on a
// cgroup.
func (z *freezes) start(ev observer.Event) {
	st := &freezeState{done: make(chan struct{}), known: make(chan struct{}), signal: ev.Time}
	z.mu.Lock()
	for pid, old := range z.byPID {
		select {
		case <-old.done:
			if time.Since(old.signal) > 2*z.max {
				delete(z.byPID, pid)
			}
		default:
		}
	}
	z.byPID[ev.TGID] = st
	z.mu.Unlock()
	z.run(func() {
		defer close(st.done)
		st.mu.Lock()
		defer st.mu.Unlock()
		data, err := proc.ReadFile(fmt.Sprintf("/proc/%d/cgroup", ev.TGID))
		if err != nil {
			close(st.known)
			st.rec.Reason = "the process was gone before it could be frozen"
			return
		}
		path := identity.ProcCgroup(data)
		st.cgroup = path
		close(st.known)
		st.rec.Cgroup = path
		var denied *freezer.DeniedError
		if errors.As(z.f.Check(path), &denied) {
			st.rec.Reason = denied.Reason
			return
		}
		if ok, why := z.allowed(path); !ok {
			st.rec.Reason = "not frozen: " + why
			return
		}
		if st.letGo.Load() {
			st.rec.Reason = "not frozen: the crash was decided and its process let go first"
			return
		}
		fr, err := z.f.Freeze(path, ev.TGID, freezeTimeout)
		if err != nil {
			switch {
			case errors.As(err, &denied):
				st.rec.Reason = denied.Reason
			case st.letGo.Load():
				// Let go meanwhile: the process may have left its cgroup.
				st.rec.Reason = "not frozen: the crash was decided and its process let go first: " + err.Error()
			default:
				st.rec.Reason = err.Error()
				z.log.Warn("freeze", zap.Int("pid", ev.TGID), zap.String("cgroup", path), zap.Error(err))
			}
			return
		}
		st.fr, st.at = fr, time.Now()
		st.rec.Frozen = true
		st.rec.LatencyMS = ms(st.at.Sub(ev.Time))
		z.log.Info("froze the crasher's container", zap.Int("pid", ev.TGID), zap.String("cgroup", path),
			zap.String("mode", fr.Mode), zap.Float64("latency_ms", st.rec.LatencyMS))
		time.AfterFunc(z.max, func() { z.thaw(ev.TGID, "freeze.max") })
	})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// state is pid's freeze attempt, nil when the agent saw no core event
// for pid.
func (z *freezes) state(pid int) *freezeState {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.byPID[pid]
}

// record waits up to d for pid's freeze attempt and returns what it did,
// or nil when the agent saw no core event for pid.
func (z *freezes) record(pid int, d time.Duration) *bundle.Freeze {
	st := z.state(pid)
	if st == nil {
		return nil
	}
	select {
	case <-st.done:
	default:
		select {
		case <-st.done:
		case <-time.After(d):
			return &bundle.Freeze{Reason: "still freezing when the helper asked"}
		}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	rec := st.rec
	return &rec
}

// cgroup waits up to d for the cgroup pid's freeze attempt read, before
// any move: the freeze's own record is taken later (thaw), once the
// crash is decided. ok is false when there is no attempt, or it read
// nothing in time.
func (z *freezes) cgroup(pid int, d time.Duration) (path string, ok bool) {
	st := z.state(pid)
	if st == nil {
		return "", false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-st.known:
		return st.cgroup, st.cgroup != ""
	case <-t.C:
		return "", false
	}
}

// exited thaws pid's container once the crashed process is gone, when no
// collection let it go before (its dump never came: a process the kernel
// would not dump, or a core_pattern changed meanwhile): a container is not
// held frozen past its crasher's life. In the background: the freeze may
// still be under way.
func (z *freezes) exited(pid int) {
	st := z.state(pid)
	if st != nil && !st.letGo.Load() {
		go z.thaw(pid, "the crashed process exited")
	}
}

// thaw thaws pid's container if it is still frozen and returns the record
// with the freeze's duration.
func (z *freezes) thaw(pid int, why string) *bundle.Freeze {
	st := z.state(pid)
	if st == nil {
		return nil
	}
	st.letGo.Store(true)
	<-st.done
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.fr != nil {
		if err := z.f.Thaw(st.fr); err != nil {
			z.log.Error("thaw", zap.Int("pid", pid), zap.String("cgroup", st.fr.Path), zap.Error(err))
		} else {
			st.rec.DurationMS = ms(time.Since(st.at))
			z.log.Info("thawed the crasher's container", zap.Int("pid", pid), zap.String("cgroup", st.fr.Path),
				zap.String("why", why), zap.Float64("frozen_ms", st.rec.DurationMS))
		}
		st.fr = nil
	}
	rec := st.rec
	return &rec
}
