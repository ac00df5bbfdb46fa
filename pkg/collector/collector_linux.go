// Package collector is the core_pattern pipe helper: the kernel starts it once
// per core dump, with the core on stdin and the crashed process held until the
// helper lets go of the pipe. It streams the core through zstd into a store
// and, meanwhile, captures what only the still-present process can give.
package collector

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/agentapi"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/proc"
	"github.com/corecatch/corecatch/pkg/spool"
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
	// CommExact says that Comm is the crashing thread's name as the
	// kernel holds it (the eBPF event's), not a pattern's rendering of
	// it: it is not read again.
	CommExact bool
	NSPID     int // in the process's own namespace (the eBPF event's); 0: not known (a pattern has none)
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
	// honours conditional writes; see spool.ClusterMarker).
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
	// FromProc says Request holds what the eBPF event gave (pid, thread,
	// signal, time) and the rest is read from /proc (procRequest) while
	// the stack is walked: the coredump socket has no % specifiers.
	FromProc bool
	// Connected, when set with Answer and Stack, waits for the intake's
	// connection: the agent starts a crash's collection at its eBPF event,
	// while the kernel is still on its way to the coredump socket, so that
	// the facts the decision reads are read meanwhile and the process is
	// let go sooner. False: no connection came, and Run returns
	// ErrNotConnected with nothing recorded.
	Connected func() bool
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
// Lookup with early asks only what a decision needs of the freeze (the
// crasher's cgroup before it was moved; Response.FreezePending says so),
// so that a container's crash is not held for its freeze; the record then
// comes with Release, or a later Lookup. An agent over its socket always
// answers in full.
type Link interface {
	Lookup(pid int, wait time.Duration, early bool) (*agentapi.Response, error)
	Release(pid int) (*agentapi.Response, error)
	Report(m *bundle.Metadata) error
}

// socketLink reaches the agent over its unix socket, with short deadlines:
// the kernel-run helper never waits long for an agent that may be down.
type socketLink struct {
	socket  string
	reports spool.Reports
}

func (l socketLink) Lookup(pid int, wait time.Duration, _ bool) (*agentapi.Response, error) {
	return agentapi.Lookup(l.socket, pid, wait)
}

func (l socketLink) Release(pid int) (*agentapi.Response, error) {
	return agentapi.Release(l.socket, pid, reportTimeout)
}

func (l socketLink) Report(m *bundle.Metadata) error {
	return agentapi.Report(l.socket, l.reports, m, reportTimeout)
}

// Claimer makes one crash the holder of a bug's window across nodes
// (store.S3.Claim).
type Claimer interface {
	Claim(ctx context.Context, key string, window time.Duration, id string, now time.Time) (string, error)
}

// taskComm returns the crashing thread's exact name. The kernel escapes %e
// ('/' and a leading '.' become '!'), so the name is read from
// /proc/PID/task/TID/comm, and %e serves only when that fails.
func taskComm(req Request) []byte {
	tid := req.TID
	if tid == 0 {
		tid = req.PID
	}
	data, err := proc.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", req.PID, tid))
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
