package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/agentapi"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/collector"
	"github.com/corecatch/corecatch/pkg/coresock"
)

// requestTimeout bounds the kernel's request on a new coredump connection;
// eventWait how long the intake waits for the crash's eBPF event (sent
// before the dump began, so normally there already).
const (
	requestTimeout = 2 * time.Second
	eventWait      = 300 * time.Millisecond
)

// serveCores takes every crash the kernel sends to the coredump socket,
// each in its own goroutine, up to collect.backlog at once; a crash beyond
// is refused before its dump and recorded without its core. It returns
// when ln is closed.
func (a *Agent) serveCores(ctx context.Context, ln *net.UnixListener) {
	// A crash taken is collected to its end, also when the agent stops.
	ctx = context.WithoutCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	held := a.held
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
		select {
		case held <- struct{}{}:
			wg.Go(func() {
				defer func() { <-held }()
				a.takeCore(ctx, c, "")
			})
		default:
			wg.Go(func() { a.takeCore(ctx, c, bundle.ReasonBusy) })
		}
	}
}

// takeCore collects one crash from its coredump connection: the decision
// (keep, or refuse before the dump) and the collection are the pipe
// helper's, run here. refuse, when set, refuses the core whatever the
// decision would be.
func (a *Agent) takeCore(ctx context.Context, c *net.UnixConn, refuse string) {
	defer c.Close()
	conn, err := coresock.Open(c, requestTimeout)
	if err != nil {
		a.o.Log.Warn("coredump connection", zap.Error(err))
		return
	}
	log := a.o.Log.With(zap.Int("pid", conn.PID))
	if a.missing != nil {
		a.missing.taken(conn.PID)
	}
	ev, hasEvent := a.events.wait(conn.PID, eventWait)
	tid, signal, at := 0, 0, time.Now()
	if hasEvent {
		tid, signal, at = ev.TID, ev.Signal, ev.Time
	}
	req, err := collector.ProcRequest(conn.PID, tid, signal, at)
	if err != nil {
		log.Warn("coredump connection", zap.Error(err))
	}
	o := collector.Options{
		Config: a.o.Config, Store: a.o.Store, Retention: a.o.Retention, Request: req, Log: log,
		Version: a.o.Version, Claimer: a.o.Claimer, Agent: link{a}, CloseRefused: true, Refuse: refuse,
		Answer: func(keep bool) error {
			if keep {
				return conn.Answer(coresock.Kernel | coresock.Wait)
			}
			return conn.Answer(coresock.Reject)
		},
		OpenCore: func() (*os.File, error) {
			// The file is the connection's only reference from now on:
			// closing it lets the kernel release the crashed process.
			f, err := conn.File()
			c.Close()
			return f, err
		},
	}
	if hasEvent {
		o.Stack = ev.Stack
	}
	if a.o.Store == nil {
		log.Error("no store for the coredump socket's crashes")
		conn.Answer(coresock.Reject)
		return
	}
	if _, err := collector.Run(ctx, o); err != nil {
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

func (l link) Lookup(pid int, wait time.Duration) (*agentapi.Response, error) {
	resp := l.a.handle(agentapi.Request{Op: "event", PID: pid, WaitMS: int(wait / time.Millisecond)})
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
