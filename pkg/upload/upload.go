// Package upload takes bundles from the outbox to a remote store. With an
// S3 store the pipe helper writes each bundle into the outbox, a local
// store in the spool, because a local write releases the crashed process
// fastest and survives any outage; the agent then uploads each bundle,
// verified, and deletes the local copy. The outbox is the queue: what is in
// it after a restart is simply uploaded then.
package upload

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

// OutboxDir is where, under the spool, bundles wait for upload.
const OutboxDir = "outbox"

// Remote is a store bundles can be uploaded to (store.S3).
type Remote interface {
	// Upload copies the bundle id, published in the local directory dir,
	// into the store, verified; uploading it again must not make a
	// second copy.
	Upload(ctx context.Context, dir, id string) error
	String() string
}

// Options configure an Uploader.
type Options struct {
	Outbox *store.File
	Remote Remote
	Log    *zap.Logger
	// MinBackoff and MaxBackoff bound the wait between attempts while the
	// remote store fails: it starts at MinBackoff and doubles.
	MinBackoff, MaxBackoff time.Duration
	// Rescan is how often the outbox is looked at without a Kick, for
	// bundles the agent was not told about.
	Rescan time.Duration
	// OnUpload is called after each attempt to upload a bundle; err nil
	// means the bundle is in the remote store, verified, and its local
	// copy is gone.
	OnUpload func(m *bundle.Metadata, err error)
	// OnBacklog is called with the bytes waiting in the outbox after
	// each change.
	OnBacklog func(bytes int64)
}

// Uploader empties the outbox into the remote store.
type Uploader struct {
	o    Options
	kick chan struct{}
}

// New prepares an uploader; Run or Drain do the work.
func New(o Options) *Uploader {
	if o.OnUpload == nil {
		o.OnUpload = func(*bundle.Metadata, error) {}
	}
	if o.OnBacklog == nil {
		o.OnBacklog = func(int64) {}
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.Rescan <= 0 {
		o.Rescan = time.Minute
	}
	return &Uploader{o: o, kick: make(chan struct{}, 1)}
}

// Remote returns the store bundles go to.
func (u *Uploader) Remote() Remote { return u.o.Remote }

// Kick asks for an upload pass as soon as possible: a bundle arrived.
func (u *Uploader) Kick() {
	select {
	case u.kick <- struct{}{}:
	default:
	}
}

// Drain uploads every bundle in the outbox, oldest first, and stops at the
// first failure (the remote store is likely down: the next bundle would
// fail too). It returns how many it uploaded.
func (u *Uploader) Drain(ctx context.Context) (int, error) {
	ids, err := u.o.Outbox.IDs()
	if err != nil {
		return 0, fmt.Errorf("read the outbox %s: %w", u.o.Outbox.Root(), err)
	}
	defer u.backlog(ctx)
	for i, id := range ids {
		if err := u.one(ctx, id); err != nil {
			return i, err
		}
		u.backlog(ctx)
	}
	return len(ids), nil
}

// one uploads a bundle and deletes its local copy.
func (u *Uploader) one(ctx context.Context, id string) error {
	m, err := u.o.Outbox.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil // deleted by the outbox's quota meanwhile
	}
	if err != nil {
		return err
	}
	if m.Analysis != nil && m.Analysis.Pending {
		return nil // the agent amends it once gdb is done, then kicks again
	}
	dir, err := u.o.Outbox.BundleDir(id)
	if err != nil {
		return err
	}
	start := time.Now()
	err = u.o.Remote.Upload(ctx, dir, id)
	if err == nil {
		err = u.o.Outbox.Delete(ctx, id)
	}
	u.o.OnUpload(m, err)
	if err != nil {
		return fmt.Errorf("upload bundle %s to %s: %w", id, u.o.Remote, err)
	}
	u.o.Log.Info("bundle uploaded", zap.String("id", id), zap.String("store", u.o.Remote.String()),
		zap.Int64("core_bytes", m.Core.StoredBytes), zap.Duration("took", time.Since(start)))
	return nil
}

// backlog reports what waits in the outbox.
func (u *Uploader) backlog(ctx context.Context) {
	if usage, err := u.o.Outbox.Usage(ctx); err == nil {
		u.o.OnBacklog(usage.Bytes)
	}
}

// Run uploads until ctx ends: whatever the outbox holds at start, then each
// bundle it is kicked for or finds on a rescan, retrying failures with
// exponential backoff.
func (u *Uploader) Run(ctx context.Context) {
	backoff := time.Duration(0)
	for {
		n, err := u.Drain(ctx)
		wait := u.o.Rescan
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			backoff = min(max(2*backoff, u.o.MinBackoff), u.o.MaxBackoff)
			wait = backoff
			u.o.Log.Warn("upload failed; bundles wait in the outbox", zap.Error(err), zap.Duration("retry_in", wait))
		default:
			if n > 0 || backoff > 0 {
				u.o.Log.Info("outbox empty", zap.Int("uploaded", n))
			}
			backoff = 0
		}
		// A new bundle does not cut short the wait for a store that is
		// away: its kick stays pending, for the pass after the wait.
		kick := u.kick
		if backoff > 0 {
			kick = nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-kick:
			t.Stop()
		}
	}
}
