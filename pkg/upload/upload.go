// Package upload takes bundles from the outbox to a remote store. With an
// S3 store the pipe helper writes each bundle into the outbox, a local
// store in the spool (spool.Outbox), because a local write releases the
// crashed process fastest and survives any outage; the agent then uploads
// each bundle, verified, and deletes the local copy. The outbox is the queue: what is in
// it after a restart is simply uploaded then.
package upload

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

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
	// QuarantineAfter is how many permanent failures (see Permanent) set
	// a bundle aside (upload.quarantine_after; at least 1).
	// RetryQuarantined tries bundles set aside again, as if they had never
	// failed.
	QuarantineAfter  int
	RetryQuarantined bool
	// OnQuarantine is called when a bundle is set aside, and OnQuarantined
	// with how many wait set aside in the outbox after each whole pass.
	OnQuarantine  func(m *bundle.Metadata)
	OnQuarantined func(n int)
}

// Permanent reports whether an upload failed for reasons of the bundle
// itself, which no retry changes: the object store refused it for good
// (store.ErrRejected: a key or object it never accepts), or a file of the
// local copy cannot be read. Anything else (the network, the service,
// credentials) is the store's and affects every bundle alike.
func Permanent(err error) bool {
	var pe *fs.PathError
	return errors.Is(err, store.ErrRejected) || errors.Is(err, errUnreadable) || errors.As(err, &pe)
}

// errUnreadable marks a bundle of the outbox whose metadata cannot be read.
var errUnreadable = errors.New("unreadable bundle")

// errQuarantined is what one returns for a bundle set aside.
var errQuarantined = errors.New("quarantined")

// Uploader empties the outbox into the remote store.
type Uploader struct {
	o    Options
	kick chan struct{}
	// quarantined holds the bundles set aside for unreadable metadata,
	// which cannot record it themselves (Drain runs in one goroutine).
	quarantined map[string]bool
}

// New prepares an uploader; Run or Drain do the work.
func New(o Options) *Uploader {
	if o.OnUpload == nil {
		o.OnUpload = func(*bundle.Metadata, error) {}
	}
	if o.OnBacklog == nil {
		o.OnBacklog = func(int64) {}
	}
	if o.OnQuarantine == nil {
		o.OnQuarantine = func(*bundle.Metadata) {}
	}
	if o.OnQuarantined == nil {
		o.OnQuarantined = func(int) {}
	}
	o.QuarantineAfter = max(o.QuarantineAfter, 1)
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

// Drain uploads every bundle in the outbox, oldest first. It stops at the
// first failure that is the remote store's (it is likely down: the next
// bundle would fail too); a bundle that fails for reasons of its own
// (Permanent) is counted in its metadata and passed over, so later
// bundles upload regardless, and after QuarantineAfter such failures it
// is set aside. It returns how many it uploaded, and the failures.
func (u *Uploader) Drain(ctx context.Context) (int, error) {
	ids, err := u.o.Outbox.IDs()
	if err != nil {
		return 0, fmt.Errorf("read the outbox %s: %w", u.o.Outbox.Root(), err)
	}
	defer u.backlog(ctx)
	uploaded, quarantined := 0, 0
	var errs []error
	for _, id := range ids {
		err := u.one(ctx, id)
		switch {
		case err == nil:
			uploaded++
			u.backlog(ctx)
		case errors.Is(err, errQuarantined):
			quarantined++
		case Permanent(err):
			errs = append(errs, err)
		default:
			// A pass cut short has not seen every bundle set aside: the
			// count waits for a whole pass.
			return uploaded, errors.Join(append(errs, err)...)
		}
	}
	u.o.OnQuarantined(quarantined)
	return uploaded, errors.Join(errs...)
}

// one uploads a bundle and deletes its local copy.
func (u *Uploader) one(ctx context.Context, id string) error {
	m, err := u.o.Outbox.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil // deleted by the outbox's quota meanwhile
	}
	if err != nil {
		// Nothing to count the failure in: a bundle whose metadata
		// cannot be read is set aside at once.
		if u.quarantined == nil {
			u.quarantined = map[string]bool{}
		}
		if !u.quarantined[id] {
			u.quarantined[id] = true
			u.o.Log.Warn("bundle set aside: its metadata cannot be read", zap.String("id", id), zap.Error(err))
			u.o.OnQuarantine(&bundle.Metadata{ID: id})
		}
		return fmt.Errorf("%w: %w: %w", errQuarantined, errUnreadable, err)
	}
	if m.Upload != nil && m.Upload.Quarantined && !u.o.RetryQuarantined {
		return errQuarantined
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
		err = fmt.Errorf("upload bundle %s to %s: %w", id, u.o.Remote, err)
		return u.failed(ctx, id, err)
	}
	u.o.Log.Info("bundle uploaded", zap.String("id", id), zap.String("store", u.o.Remote.String()),
		zap.Int64("core_bytes", m.Core.StoredBytes), zap.Duration("took", time.Since(start)))
	return nil
}

// failed counts a failed upload in the bundle's metadata (so that the count
// survives restarts), sets the bundle aside after QuarantineAfter permanent
// failures, and returns err.
func (u *Uploader) failed(ctx context.Context, id string, err error) error {
	var set *bundle.Metadata
	uerr := u.o.Outbox.Update(ctx, id, func(m *bundle.Metadata) error {
		if m.Upload == nil || (u.o.RetryQuarantined && m.Upload.Quarantined) {
			m.Upload = &bundle.Upload{}
		}
		m.Upload.Failures++
		m.Upload.LastError = err.Error()
		if Permanent(err) {
			m.Upload.Permanent++
			if m.Upload.Permanent >= u.o.QuarantineAfter && !m.Upload.Quarantined {
				m.Upload.Quarantined, set = true, m
			}
		}
		return nil
	})
	if uerr != nil && !errors.Is(uerr, store.ErrNotFound) {
		u.o.Log.Warn("count a failed upload", zap.String("id", id), zap.Error(uerr))
	}
	if set != nil {
		u.o.Log.Warn("bundle set aside after permanent upload failures; later bundles upload regardless",
			zap.String("id", id), zap.Int("failures", set.Upload.Permanent), zap.Error(err))
		u.o.OnQuarantine(set)
		return fmt.Errorf("%w: %w", errQuarantined, err)
	}
	return err
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
