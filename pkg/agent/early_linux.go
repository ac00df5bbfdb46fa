package agent

import (
	"sync"
	"time"

	"github.com/corecatch/corecatch/pkg/coresock"
)

// earlyCrashes matches the collections started at a crash's eBPF event
// with the kernel's connection for it, by pid, whichever comes first. The
// pid cannot name another process meanwhile: the kernel holds the crashed
// one, unreaped, until its dump is answered.
type earlyCrashes struct {
	mu sync.Mutex
	// byPID holds a waiting early collection, or nil when the connection
	// came first and is collected without one.
	byPID map[int]*earlyCrash
}

// earlyCrash is one early collection waiting for its connection.
type earlyCrash struct {
	conn chan *coresock.Conn // buffered: hand never blocks
	gone chan struct{}       // closed when a later crash of the pid replaced it
}

func newEarlyCrashes() *earlyCrashes { return &earlyCrashes{byPID: map[int]*earlyCrash{}} }

// start registers an early collection of pid's crash, or returns nil when
// its connection came first. One still waiting for an earlier crash of the
// pid (whose dump never came, so the process was reaped and its pid
// reused) is told it is gone.
func (e *earlyCrashes) start(pid int) *earlyCrash {
	e.mu.Lock()
	defer e.mu.Unlock()
	old, ok := e.byPID[pid]
	if ok && old == nil {
		return nil
	}
	if ok {
		close(old.gone)
	}
	ec := &earlyCrash{conn: make(chan *coresock.Conn, 1), gone: make(chan struct{})}
	e.byPID[pid] = ec
	return ec
}

// hand gives conn to its crash's early collection and reports whether
// there was one; when not, the crash is marked as collected from its
// connection (done ends that).
func (e *earlyCrashes) hand(conn *coresock.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ec := e.byPID[conn.PID]; ec != nil {
		delete(e.byPID, conn.PID)
		ec.conn <- conn
		return true
	}
	e.byPID[conn.PID] = nil
	return false
}

// done ends a crash collected from its connection.
func (e *earlyCrashes) done(pid int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ec, ok := e.byPID[pid]; ok && ec == nil {
		delete(e.byPID, pid)
	}
}

// wait returns ec's connection, or nil when none came within d or a later
// crash of the pid replaced it.
func (e *earlyCrashes) wait(pid int, ec *earlyCrash, d time.Duration) *coresock.Conn {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case conn := <-ec.conn:
		return conn
	case <-ec.gone:
		return nil
	case <-t.C:
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.byPID[pid] == ec {
		delete(e.byPID, pid)
	}
	select {
	case conn := <-ec.conn: // handed as the wait ended
		return conn
	default:
		return nil
	}
}
