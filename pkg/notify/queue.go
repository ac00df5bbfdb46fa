package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/corecatch/corecatch/pkg/config"
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

// limits bound a queue: items, bytes of one item and bytes in all, in
// memory as in the spool. Whoever can make notifications (a crashing
// container's names, a webhook's sender) must not fill either.
type limits struct {
	count       int
	item, total int64
}

// limitsOf reads a queue's limits from the config.
func limitsOf(cfg config.Notify) limits {
	return limits{count: cfg.QueueMax, item: cfg.ItemMaxBytes.Bytes, total: cfg.QueueMaxBytes.Bytes}
}

// errTooLarge is an item over the queue's item limit.
var errTooLarge = errors.New("notification larger than notify.item_max_bytes: dropped")

// queue is one sink's persisted, bounded set of pending items, at most one
// per key waiting and one per key being sent. A file per item: <hash>.json
// waits, <hash>.sending is in flight; a restart merges both back.
type queue struct {
	dir string
	max limits

	mu      sync.Mutex
	pending map[string]*item
	sending map[string]*item
	// size is each file's bytes in the spool, bytes their sum.
	size  map[string]int64
	bytes int64
	wake  chan struct{}
}

// openQueue loads the items a previous agent left in dir, within l: a file
// over the item limit is removed, read no further than the limit, and the
// oldest items beyond the count or total go.
func openQueue(dir string, l limits) (*queue, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create the notification queue %s: %w", dir, err)
	}
	q := &queue{dir: dir, max: l, pending: map[string]*item{}, sending: map[string]*item{}, size: map[string]int64{},
		wake: make(chan struct{}, 1)}
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
		data, err := readAtMost(p, l.item)
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
	for k, it := range q.pending {
		if err := q.write(it, ".json"); errors.Is(err, errTooLarge) {
			delete(q.pending, k)
			os.Remove(q.path(k, ".json"))
		} else if err != nil {
			return nil, err
		}
	}
	for len(q.pending) > l.count || q.bytes > l.total {
		if q.evict() == nil {
			break
		}
	}
	return q, nil
}

// readAtMost reads a file of at most max bytes; a larger one is an error.
func readAtMost(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(data)) > max {
		err = errTooLarge
	}
	return data, err
}

// evict drops the oldest waiting item, and returns it (nil when nothing
// waits).
func (q *queue) evict() *item {
	var oldest *item
	for _, p := range q.pending {
		if oldest == nil || p.Queued.Before(oldest.Queued) {
			oldest = p
		}
	}
	if oldest != nil {
		delete(q.pending, oldest.Key)
		os.Remove(q.path(oldest.Key, ".json"))
		q.account(q.path(oldest.Key, ".json"), 0)
	}
	return oldest
}

// account records the bytes of the file at path (0: gone).
func (q *queue) account(path string, n int64) {
	q.bytes += n - q.size[path]
	if n == 0 {
		delete(q.size, path)
	} else {
		q.size[path] = n
	}
}

func (q *queue) path(key, ext string) string {
	h := sha256.Sum256([]byte(key))
	return filepath.Join(q.dir, hex.EncodeToString(h[:12])+ext)
}

// encode is an item as its file holds it, refused over the item limit.
func (q *queue) encode(it *item) ([]byte, error) {
	data, err := json.Marshal(it)
	if err == nil && int64(len(data)) > q.max.item {
		err = fmt.Errorf("%w (%d bytes, over %d)", errTooLarge, len(data), q.max.item)
	}
	return data, err
}

// write persists an item: a new file renamed over the old one, so that a
// reader never sees half of it.
func (q *queue) write(it *item, ext string) error {
	data, err := q.encode(it)
	if err != nil {
		return err
	}
	return q.put(it.Key, ext, data)
}

// put writes an encoded item and accounts for its bytes.
func (q *queue) put(key, ext string, data []byte) error {
	p := q.path(key, ext)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("persist a notification: %w (is the spool's disk full?)", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return err
	}
	q.account(p, int64(len(data)))
	return nil
}

// add merges it into the queue and persists it. When the queue is full (by
// count or bytes) it drops the oldest waiting items and returns them; an
// item over the item limit, or one that cannot fit beside what is in
// flight, is refused with errTooLarge.
func (q *queue) add(it *item) (dropped []*item, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if old := q.pending[it.Key]; old != nil {
		it = merge(old, it)
	}
	data, err := q.encode(it)
	if err != nil {
		return nil, err
	}
	n := int64(len(data))
	fits := func() bool {
		count := len(q.pending) + len(q.sending)
		if q.pending[it.Key] == nil {
			count++
		}
		return count <= q.max.count && q.bytes-q.size[q.path(it.Key, ".json")]+n <= q.max.total
	}
	for !fits() {
		d := q.evict()
		if d == nil {
			return dropped, fmt.Errorf("%w: the queue is full of notifications being sent", errTooLarge)
		}
		dropped = append(dropped, d)
	}
	if err := q.put(it.Key, ".json", data); err != nil {
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
		q.account(q.path(k, ".sending"), q.size[q.path(k, ".json")])
		q.account(q.path(k, ".json"), 0)
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
	q.account(q.path(it.Key, ".sending"), 0)
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
		q.account(q.path(it.Key, ".sending"), 0)
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
