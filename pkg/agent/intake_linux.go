package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/agentapi"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/collector"
	"github.com/corecatch/corecatch/pkg/coresock"
	"github.com/corecatch/corecatch/pkg/observer"
)

// requestTimeout bounds the kernel's request on a new coredump connection;
// eventWait how long the intake waits for the crash's eBPF event (sent
// before the dump began, so normally there already); earlyWait how long a
// collection started at the event waits for the kernel's connection (it
// comes within a millisecond unless the dump is not ours: a process that
// is not dumpable, core_pattern changed meanwhile; one later than this is
// collected as it comes).
const (
	requestTimeout = 2 * time.Second
	eventWait      = 300 * time.Millisecond
	earlyWait      = time.Second
)

// serveCores takes every crash the kernel sends to the coredump socket,
// each in its own goroutine, up to collect.backlog at once; a crash beyond
// is refused before its dump and recorded without its core. A crash whose
// collection started at its eBPF event (startEarly) is handed to it. It
// returns when ln is closed.
func (a *Agent) serveCores(ctx context.Context, ln *net.UnixListener) {
	// A crash taken is collected to its end, also when the agent stops.
	ctx = context.WithoutCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			a.o.Log.Error("accept on the coredump socket", zap.Error(err))
			time.Sleep(10 * time.Millisecond)
			continue
		}
		wg.Go(func() { a.takeConn(ctx, c) })
	}
}

// takeConn reads a coredump connection's request and gives it to its
// crash's early collection, or collects the crash from it.
func (a *Agent) takeConn(ctx context.Context, c *net.UnixConn) {
	conn, err := coresock.Open(c, requestTimeout)
	if err != nil {
		c.Close()
		a.o.Log.Warn("coredump connection", zap.Error(err))
		return
	}
	if a.early.hand(conn) {
		return // its event was read: watch notes the crash
	}
	if a.missing != nil {
		a.missing.taken(conn.PID)
	}
	defer a.early.done(conn.PID)
	defer conn.Close()
	refuse := ""
	select {
	case a.held <- struct{}{}:
		defer func() { <-a.held }()
	default:
		refuse = bundle.ReasonBusy
	}
	var event *observer.Event
	if ev, ok := a.events.wait(conn.PID, eventWait); ok {
		event = &ev
	}
	a.collectCore(ctx, conn.PID, event, refuse, func() *coresock.Conn { return conn }, nil)
}

// startEarly starts the collection of a crash the coredump socket will
// take, at its eBPF event: the kernel connects a moment later, and what
// the decision reads (the stack's names, the live process, its container)
// is read meanwhile, so that a refused crash is let go sooner. Only with a
// stack to decide on and a free collection slot; otherwise its connection
// is collected as it comes.
func (a *Agent) startEarly(ctx context.Context, ev observer.Event) {
	if a.o.Cores == nil || a.o.Store == nil || len(ev.Stack) == 0 || ctx.Err() != nil {
		return // a stopping agent's crashes go to the pipe helper
	}
	select {
	case a.held <- struct{}{}:
	default:
		return
	}
	ec := a.early.start(ev.TGID)
	if ec == nil {
		<-a.held
		return
	}
	a.taking.Go(func() {
		defer func() { <-a.held }()
		var conn *coresock.Conn
		connected := func() bool {
			conn = a.early.wait(ev.TGID, ec, earlyWait)
			return conn != nil
		}
		a.collectCore(context.WithoutCancel(ctx), ev.TGID, &ev, "", func() *coresock.Conn { return conn }, connected)
		if conn != nil {
			conn.Close()
		}
	})
	// This runs on the observer's reader thread, which is locked to it:
	// the goroutine just started waits in the thread's run queue while
	// the reader blocks in epoll_wait holding it, until the runtime takes
	// it back (up to 10 ms on an idle agent). Yielding hands it on at once.
	runtime.Gosched()
}

// collectCore collects one crash of the coredump socket, conn its
// connection (once connected says it came, when that is set): the
// decision (keep, or refuse before the dump) and the collection are the
// pipe helper's, run here. ev is its eBPF event (nil: none); refuse, when
// set, refuses the core whatever the decision would be.
func (a *Agent) collectCore(ctx context.Context, pid int, ev *observer.Event, refuse string, conn func() *coresock.Conn, connected func() bool) {
	// Lazily: a collection that logs nothing (a refused duplicate) does
	// not pay for encoding the field while the kernel holds the crasher.
	log := a.o.Log.WithLazy(zap.Int("pid", pid))
	req := collector.Request{PID: pid, Time: time.Now()}
	if ev != nil {
		req.TID, req.Signal, req.Time = ev.TID, ev.Signal, ev.Time
		req.NSPID, req.Comm, req.CommExact = ev.NSPID, []byte(ev.Comm), ev.Comm != ""
	}
	o := collector.Options{
		Config: a.o.Config, Store: a.o.Store, Retention: a.o.Retention, Request: req, FromProc: true, Log: log,
		Version: a.o.Version, Claimer: a.o.Claimer, Agent: link{a}, CloseRefused: true, Refuse: refuse,
		Connected: connected,
		Answer: func(keep bool) error {
			if keep {
				return conn().Answer(coresock.Kernel | coresock.Wait)
			}
			return conn().Answer(coresock.Reject)
		},
		OpenCore: func() (*os.File, error) {
			// The file is the connection's only reference from now on:
			// closing it lets the kernel release the crashed process.
			c := conn()
			f, err := c.File()
			c.Close()
			return f, err
		},
	}
	if ev != nil {
		o.Stack = ev.Stack
	}
	if a.o.Store == nil {
		log.Error("no store for the coredump socket's crashes")
		conn().Answer(coresock.Reject)
		return
	}
	if _, err := collector.Run(ctx, o); err != nil && !errors.Is(err, collector.ErrNotConnected) {
		log.Error("core not stored", zap.Error(err))
	}
}

// take collects a crash the pipe helper handed over (its pattern
// arguments and the kernel's pipe), in the background: the helper exits
// once this returns. A refused core's pipe is closed as soon as the crash
// is decided, so the kernel stops dumping it.
func (a *Agent) take(args []string, core *os.File) error {
	req, err := collector.ParseRequest(args)
	if err != nil {
		core.Close()
		return err
	}
	if a.o.Store == nil {
		core.Close()
		return errors.New("the agent has no store for handed-over crashes")
	}
	refuse := ""
	select {
	case a.held <- struct{}{}:
	default:
		refuse = bundle.ReasonBusy
	}
	log := a.o.Log.With(zap.Int("pid", req.PID))
	if a.missing != nil {
		a.missing.taken(req.PID)
	}
	a.taking.Go(func() {
		if refuse == "" {
			defer func() { <-a.held }()
		}
		o := collector.Options{
			Config: a.o.Config, Store: a.o.Store, Retention: a.o.Retention, Request: req, Core: core, Log: log,
			Version: a.o.Version, Claimer: a.o.Claimer, Agent: link{a}, CloseRefused: true, Refuse: refuse,
		}
		if _, err := collector.Run(context.Background(), o); err != nil {
			log.Error("core not stored", zap.Error(err))
		}
	})
	return nil
}

// link is the collector's Link to this agent, by direct calls.
type link struct{ a *Agent }

func (l link) Lookup(pid int, wait time.Duration, early bool) (*agentapi.Response, error) {
	resp := l.a.event(pid, wait, early)
	if resp.Error != "" {
		return &resp, errors.New(resp.Error)
	}
	return &resp, nil
}

func (l link) Release(pid int) (*agentapi.Response, error) {
	resp := l.a.handle(agentapi.Request{Op: "release", PID: pid})
	return &resp, nil
}

func (l link) Report(m *bundle.Metadata) error {
	l.a.handle(agentapi.Request{Op: "report", Bundle: m})
	return nil
}
