package agent

import (
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/observer"
)

// TestEventCacheExpiresInOrder: events older than the TTL go, newer ones
// and a reused pid's latest event stay, and each add removes only what
// expired.
func TestEventCacheExpiresInOrder(t *testing.T) {
	clock := time.Unix(1000, 0)
	c := newEventCache(time.Minute)
	c.now = func() time.Time { return clock }
	for pid := 1; pid <= 5; pid++ {
		c.add(observer.Event{TGID: pid, Signal: 11})
		clock = clock.Add(20 * time.Second)
	}
	// pid 1 again, later: its old entry must not expire the new one.
	c.add(observer.Event{TGID: 1, Signal: 6})
	clock = clock.Add(30 * time.Second) // now 130 s after pid 1's first event
	c.add(observer.Event{TGID: 6, Signal: 11})
	for _, pid := range []int{2, 3, 4} { // 110, 90 and 70 s old
		if _, ok := c.byPID[pid]; ok {
			t.Errorf("pid %d is still cached", pid)
		}
	}
	for _, pid := range []int{5, 6, 1} {
		if _, ok := c.byPID[pid]; !ok {
			t.Errorf("pid %d expired too early", pid)
		}
	}
	if ev, ok := c.wait(1, 0); !ok || ev.Signal != 6 {
		t.Errorf("pid 1 = %+v, %v; want its second event", ev, ok)
	}
	if c.order.Len() != len(c.byPID) {
		t.Errorf("%d entries in order, %d by pid", c.order.Len(), len(c.byPID))
	}
	clock = clock.Add(2 * time.Minute)
	if _, ok := c.wait(6, 0); ok {
		t.Error("an expired event was returned")
	}
}

// BenchmarkEventCacheAdd adds events to a cache that already holds 400,000
// processes' (a busy node): the cost per event must not grow with them.
func BenchmarkEventCacheAdd(b *testing.B) {
	c := newEventCache(5 * time.Minute)
	for pid := 0; pid < 400000; pid++ {
		c.add(observer.Event{TGID: pid})
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.add(observer.Event{TGID: 400000 + i%1000000})
	}
}
