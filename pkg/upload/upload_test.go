package upload

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

// fakeRemote fails while down, and records what it received.
type fakeRemote struct {
	mu   sync.Mutex
	down bool
	got  []string
}

func (r *fakeRemote) Upload(_ context.Context, _, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return errors.New("connection refused")
	}
	r.got = append(r.got, id)
	return nil
}

func (r *fakeRemote) String() string { return "s3://fake" }

func (r *fakeRemote) set(down bool) {
	r.mu.Lock()
	r.down = down
	r.mu.Unlock()
}

func spool(t *testing.T, outbox *store.File, when time.Time) string {
	t.Helper()
	id := bundle.NewID(when, []byte("crasher"))
	w, err := outbox.Put(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := w.Create(bundle.CoreFile)
	f.Write([]byte("core"))
	f.Close()
	if err := w.Commit(context.Background(), &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: when}); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestRunRetriesUntilTheRemoteIsBack: bundles spooled while the remote
// fails stay in the outbox, attempts back off, and once the remote is back
// every bundle is uploaded once, oldest first, and deleted locally; the
// backlog goes to 0.
func TestRunRetriesUntilTheRemoteIsBack(t *testing.T) {
	outbox := store.NewFile(filepath.Join(t.TempDir(), OutboxDir))
	day := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
	older, newer := spool(t, outbox, day), spool(t, outbox, day.Add(time.Hour))
	remote := &fakeRemote{down: true}
	var mu sync.Mutex
	var attempts, failures int
	var backlog []int64
	u := New(Options{Outbox: outbox, Remote: remote, Log: zap.NewNop(), MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
		OnUpload: func(_ *bundle.Metadata, err error) {
			mu.Lock()
			defer mu.Unlock()
			attempts++
			if err != nil {
				failures++
			}
		},
		OnBacklog: func(b int64) { mu.Lock(); backlog = append(backlog, b); mu.Unlock() },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { u.Run(ctx); close(done) }()
	time.Sleep(300 * time.Millisecond)
	if ids, _ := outbox.IDs(); len(ids) != 2 {
		t.Errorf("outbox while the remote is down: %q", ids)
	}
	mu.Lock()
	if failures < 3 || failures > 20 || attempts != failures {
		t.Errorf("%d attempts, %d failed in 300ms of outage with backoff 10ms..40ms", attempts, failures)
	}
	mu.Unlock()
	remote.set(false)
	u.Kick()
	deadline := time.Now().Add(5 * time.Second)
	for ids, _ := outbox.IDs(); len(ids) > 0 && time.Now().Before(deadline); ids, _ = outbox.IDs() {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if len(remote.got) != 2 || remote.got[0] != older || remote.got[1] != newer {
		t.Errorf("uploaded %q, want %s then %s", remote.got, older, newer)
	}
	if ids, _ := outbox.IDs(); len(ids) != 0 {
		t.Errorf("outbox after upload: %q", ids)
	}
	if len(backlog) == 0 || backlog[len(backlog)-1] != 0 || backlog[0] == 0 {
		t.Errorf("backlog reports %v: want bytes first, 0 last", backlog)
	}
}
