package upload

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	outbox := store.NewFile(t.TempDir())
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

// rejectingRemote refuses one bundle for good, as S3 refuses a key over
// 1024 bytes, and takes the others.
type rejectingRemote struct {
	fakeRemote
	bad string
}

func (r *rejectingRemote) Upload(ctx context.Context, dir, id string) error {
	if id == r.bad {
		return fmt.Errorf("upload %s: %w: KeyTooLongError", id, store.ErrRejected)
	}
	return r.fakeRemote.Upload(ctx, dir, id)
}

// TestPermanentFailureDoesNotBlock: a bundle the remote refuses for good is
// counted in its metadata and passed over, later bundles upload in the same
// pass, and after QuarantineAfter refusals it is set aside and no longer
// tried (nor does it make the pass fail) until RetryQuarantined.
func TestPermanentFailureDoesNotBlock(t *testing.T) {
	ctx := context.Background()
	outbox := store.NewFile(t.TempDir())
	day := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
	bad := spool(t, outbox, day)
	remote := &rejectingRemote{bad: bad}
	var set []string
	var waiting int
	u := New(Options{Outbox: outbox, Remote: remote, Log: zap.NewNop(), QuarantineAfter: 2,
		OnQuarantine:  func(m *bundle.Metadata) { set = append(set, m.ID) },
		OnQuarantined: func(n int) { waiting = n }})
	for pass := 1; pass <= 3; pass++ {
		later := spool(t, outbox, day.Add(time.Duration(pass)*time.Hour))
		n, err := u.Drain(ctx)
		if n != 1 || remote.got[len(remote.got)-1] != later {
			t.Fatalf("pass %d: uploaded %d (%q); want the later bundle %s", pass, n, remote.got, later)
		}
		m, gerr := outbox.Get(ctx, bad)
		if gerr != nil {
			t.Fatal(gerr)
		}
		switch pass {
		case 1:
			if !Permanent(err) || m.Upload == nil || m.Upload.Permanent != 1 || m.Upload.Quarantined || !strings.Contains(m.Upload.LastError, "KeyTooLongError") {
				t.Errorf("pass 1: err %v, upload record %+v; want one permanent failure counted", err, m.Upload)
			}
		case 2, 3:
			if err != nil || !m.Upload.Quarantined || m.Upload.Permanent != 2 || len(set) != 1 || waiting != 1 {
				t.Errorf("pass %d: err %v, record %+v, set aside %q, %d waiting; want it set aside once, after 2 refusals", pass, err, m.Upload, set, waiting)
			}
		}
	}
	// Retried on request: refused again, counted afresh.
	retry := New(Options{Outbox: outbox, Remote: remote, Log: zap.NewNop(), QuarantineAfter: 2, RetryQuarantined: true})
	if _, err := retry.Drain(ctx); !Permanent(err) {
		t.Errorf("retry: %v, want the refusal", err)
	}
	if m, _ := outbox.Get(ctx, bad); m.Upload.Quarantined || m.Upload.Permanent != 1 {
		t.Errorf("after a retry: %+v; want one fresh refusal, not set aside", m.Upload)
	}
}
