package agent

import (
	"container/list"
	"sync"
	"time"

	"github.com/corecatch/corecatch/pkg/observer"
)

// eventCache keeps recent fatal-signal events by process, for the helper
// that asks a moment later. Entries expire in the order they arrived, from
// the front of a list, so an event costs O(1) however many processes the
// node has seen (a sweep of the whole map cost 46 ms an event at 400,000
// pids).
type eventCache struct {
	ttl     time.Duration
	now     func() time.Time
	mu      sync.Mutex
	byPID   map[int]*list.Element // of *cached
	order   *list.List            // oldest first
	changed chan struct{}
}

type cached struct {
	ev observer.Event
	at time.Time
}

func newEventCache(ttl time.Duration) *eventCache {
	return &eventCache{ttl: ttl, now: time.Now, byPID: map[int]*list.Element{}, order: list.New(), changed: make(chan struct{})}
}

func (c *eventCache) add(ev observer.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for front := c.order.Front(); front != nil && now.Sub(front.Value.(*cached).at) > c.ttl; front = c.order.Front() {
		delete(c.byPID, front.Value.(*cached).ev.TGID)
		c.order.Remove(front)
	}
	if old, ok := c.byPID[ev.TGID]; ok {
		c.order.Remove(old) // a reused pid: its new event goes to the back
	}
	c.byPID[ev.TGID] = c.order.PushBack(&cached{ev: ev, at: now})
	close(c.changed)
	c.changed = make(chan struct{})
}

// wait returns the event of pid, waiting up to d for it to arrive.
func (c *eventCache) wait(pid int, d time.Duration) (observer.Event, bool) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		e, ok := c.byPID[pid]
		var ev *cached
		if ok {
			ev = e.Value.(*cached)
		}
		changed := c.changed
		c.mu.Unlock()
		if ok && c.now().Sub(ev.at) <= c.ttl {
			return ev.ev, true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return observer.Event{}, false
		}
	}
}
