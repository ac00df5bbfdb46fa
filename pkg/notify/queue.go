package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// item is one pending notification of a sink: a crash (or a run of crashes
// of one program, merged) or one Alertmanager group's state. Items live as
// files in the sink's queue directory, so that an agent restart loses
// nothing.
type item struct {
	// Key identifies what merges: crashes of one program, or one
	// Alertmanager group in one status.
	Key    string    `json:"key"`
	Queued time.Time `json:"queued"`
	Crash  *Crash    `json:"crash,omitempty"`
	Alerts *Webhook  `json:"alerts,omitempty"`
}

// merge folds newer into old: crash counts add up and the latest crash
// speaks for the run; an Alertmanager group's latest state replaces the
// older one (Alertmanager always sends a group's whole state).
func merge(old, newer *item) *item {
	if old.Crash == nil || newer.Crash == nil {
		newer.Queued = old.Queued
		return newer
	}
	c := *newer.Crash
	c.Count += old.Crash.Count
	c.First = old.Crash.First
	return &item{Key: old.Key, Queued: old.Queued, Crash: &c}
}

// queue is one sink's persisted, bounded set of pending items, at most one
// per key waiting and one per key being sent. A file per item: <hash>.json
// waits, <hash>.sending is in flight; a restart merges both back.
type queue struct {
	dir string
	max int

	mu      sync.Mutex
	pending map[string]*item
	sending map[string]*item
	wake    chan struct{}
}

// openQueue loads the items a previous agent left in dir.
func openQueue(dir string, max int) (*queue, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create the notification queue %s: %w", dir, err)
	}
	q := &queue{dir: dir, max: max, pending: map[string]*item{}, sending: map[string]*item{}, wake: make(chan struct{}, 1)}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read the notification queue: %w", err)
	}
	// Sending files first: what waits arrived after them.
	slices.SortFunc(ents, func(a, b fs.DirEntry) int {
		return strings.Compare(filepath.Ext(b.Name()), filepath.Ext(a.Name()))
	})
	for _, e := range ents {
		ext := filepath.Ext(e.Name())
		if ext != ".json" && ext != ".sending" {
			continue
		}
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		var it item
		if err == nil {
			err = json.Unmarshal(data, &it)
		}
		if err != nil || it.Key == "" {
			// A file torn by a crash of the agent mid-write cannot be
			// sent; keeping it would block nothing but clutter.
			os.Remove(p)
			continue
		}
		if old := q.pending[it.Key]; old != nil {
			q.pending[it.Key] = merge(old, &it)
		} else {
			q.pending[it.Key] = &it
		}
		if ext == ".sending" {
			os.Remove(p)
		}
	}
	for _, it := range q.pending {
		if err := q.write(it, ".json"); err != nil {
			return nil, err
		}
	}
	return q, nil
}

func (q *queue) path(key, ext string) string {
	h := sha256.Sum256([]byte(key))
	return filepath.Join(q.dir, hex.EncodeToString(h[:12])+ext)
}

// write persists an item: a new file renamed over the old one, so that a
// reader never sees half of it.
func (q *queue) write(it *item, ext string) error {
	data, err := json.Marshal(it)
	if err != nil {
		return err
	}
	p := q.path(it.Key, ext)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("persist a notification: %w (is the spool's disk full?)", err)
	}
	return os.Rename(tmp, p)
}

// add merges it into the queue and persists it. When the queue is full it
// drops the oldest waiting item and returns it.
func (q *queue) add(it *item) (dropped *item, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if old := q.pending[it.Key]; old != nil {
		it = merge(old, it)
	} else if len(q.pending)+len(q.sending) >= q.max {
		for _, p := range q.pending {
			if dropped == nil || p.Queued.Before(dropped.Queued) {
				dropped = p
			}
		}
		if dropped != nil {
			delete(q.pending, dropped.Key)
			os.Remove(q.path(dropped.Key, ".json"))
		}
	}
	if err := q.write(it, ".json"); err != nil {
		return dropped, err
	}
	q.pending[it.Key] = it
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return dropped, nil
}

// take moves the waiting items that ready accepts to in flight, oldest
// first. Keys already in flight wait for their send to finish.
func (q *queue) take(ready func(*item) bool) []*item {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []*item
	for k, it := range q.pending {
		if q.sending[k] != nil || !ready(it) {
			continue
		}
		if err := os.Rename(q.path(k, ".json"), q.path(k, ".sending")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		delete(q.pending, k)
		q.sending[k] = it
		out = append(out, it)
	}
	slices.SortFunc(out, func(a, b *item) int { return a.Queued.Compare(b.Queued) })
	return out
}

// done forgets a delivered item.
func (q *queue) done(it *item) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.sending, it.Key)
	os.Remove(q.path(it.Key, ".sending"))
}

// retry puts an undelivered item back, merged with what arrived for its key
// while it was in flight.
func (q *queue) retry(it *item) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.sending, it.Key)
	if newer := q.pending[it.Key]; newer != nil {
		it = merge(it, newer)
	}
	q.pending[it.Key] = it
	if q.write(it, ".json") == nil {
		os.Remove(q.path(it.Key, ".sending"))
	}
}

// next returns the earliest time, by at, at which a waiting item may go;
// zero when nothing waits.
func (q *queue) next(at func(*item) time.Time) time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	var t time.Time
	for k, it := range q.pending {
		if q.sending[k] != nil {
			continue
		}
		if a := at(it); t.IsZero() || a.Before(t) {
			t = a
		}
	}
	return t
}

// len is the number of items waiting or in flight.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending) + len(q.sending)
}

// serve is a sink's send loop until ctx ends: the items whose readyAt has
// come go to flush, which returns false when the service failed and it put
// them back; the loop then backs off, 1 s doubling to 30 s, whatever
// arrives meanwhile.
func serve(ctx context.Context, q *queue, readyAt func(*item) time.Time, flush func([]*item) bool) {
	var backoff time.Duration
	var retryAt time.Time
	for {
		wait := time.Hour
		if next := q.next(readyAt); !next.IsZero() {
			if retryAt.After(next) {
				next = retryAt
			}
			wait = time.Until(next)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-q.wake:
			t.Stop()
		case <-t.C:
		}
		now := time.Now()
		if now.Before(retryAt) {
			continue
		}
		items := q.take(func(it *item) bool { return !readyAt(it).After(now) })
		if len(items) == 0 {
			continue
		}
		if flush(items) {
			backoff = 0
		} else {
			backoff = min(max(2*backoff, time.Second), 30*time.Second)
			retryAt = time.Now().Add(backoff)
		}
	}
}
