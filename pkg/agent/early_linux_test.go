package agent

import (
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/coresock"
)

// TestEarlyCrashes: a connection reaches the collection its event
// started, whichever comes first; one that came first keeps a later
// event from starting a second collection until it is done; a collection
// whose connection never comes gives up, and one replaced by a later
// crash of its pid is told at once.
func TestEarlyCrashes(t *testing.T) {
	e := newEarlyCrashes()
	conn := &coresock.Conn{PID: 10}

	ec := e.start(10)
	if ec == nil || !e.hand(conn) {
		t.Fatal("the connection did not reach the early collection")
	}
	if got := e.wait(10, ec, time.Second); got != conn {
		t.Fatalf("wait = %v, want the handed connection", got)
	}

	if e.hand(&coresock.Conn{PID: 11}) {
		t.Fatal("a connection without an early collection was handed")
	}
	if e.start(11) != nil {
		t.Fatal("an event after its connection started a second collection")
	}
	e.done(11)
	if e.start(11) == nil {
		t.Fatal("a later crash of the pid could not start")
	}

	late := e.start(12)
	start := time.Now()
	if got := e.wait(12, late, 20*time.Millisecond); got != nil || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("wait without a connection = %v after %s", got, time.Since(start))
	}
	if e.hand(&coresock.Conn{PID: 12}) {
		t.Fatal("a connection reached a collection that had given up")
	}
	e.done(12)

	old := e.start(13)
	e.start(13)
	start = time.Now()
	if got := e.wait(13, old, time.Second); got != nil || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("a replaced collection waited %s (got %v)", time.Since(start), got)
	}
}
