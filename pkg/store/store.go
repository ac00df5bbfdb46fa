// Package store keeps bundles. One interface serves the pipe helper, which
// streams a bundle in, and the SRE commands, which list and read bundles back;
// each backend (a local directory, an S3 bucket) is addressed by a URL.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// ErrNotFound is returned when a bundle or one of its files does not exist.
var ErrNotFound = errors.New("not found")

// Store is a place bundles live. A bundle becomes visible to List and Get
// only once Writer.Commit succeeded, so readers never see a partial bundle.
type Store interface {
	// Put starts writing the bundle with the given id.
	Put(ctx context.Context, id string) (Writer, error)
	// List returns the metadata of every complete bundle, newest first. It
	// reads metadata only, never cores.
	List(ctx context.Context) ([]*bundle.Metadata, error)
	// Get returns one bundle's metadata.
	Get(ctx context.Context, id string) (*bundle.Metadata, error)
	// Open reads one file of a bundle by its bundle-relative name.
	Open(ctx context.Context, id, name string) (io.ReadCloser, error)
	// Delete removes a bundle; deleting a missing bundle is not an error.
	Delete(ctx context.Context, id string) error
	// Usage reports how much the store holds.
	Usage(ctx context.Context) (Usage, error)
	// String returns the store's URL, for messages.
	String() string
}

// Skipped is the error List returns beside the bundles it did list when
// some could not be read even on a second try: one error per bundle, each
// naming it. One bad bundle (a hostile metadata.json in a shared bucket, a
// read that failed twice) never hides the others; callers warn and go on.
type Skipped []error

func (s Skipped) Error() string {
	return fmt.Sprintf("%d bundles skipped: %v", len(s), errors.Join(s...))
}

// Unwrap returns each bundle's error.
func (s Skipped) Unwrap() []error { return s }

// collect reads the metadata of ids with get, workers at a time, and
// returns it in the order of ids: bundles gone meanwhile (ErrNotFound) are
// left out, one that fails is read once more, then skipped and reported in
// a Skipped error.
func collect(ctx context.Context, ids []string, workers int, get func(context.Context, string) (*bundle.Metadata, error)) ([]*bundle.Metadata, error) {
	metas := make([]*bundle.Metadata, len(ids))
	errs := make([]error, len(ids))
	parallel(len(ids), workers, func(i int) {
		metas[i], errs[i] = get(ctx, ids[i])
		if errs[i] != nil && !errors.Is(errs[i], ErrNotFound) && ctx.Err() == nil {
			metas[i], errs[i] = get(ctx, ids[i])
		}
	})
	var out []*bundle.Metadata
	var bad Skipped
	for i, m := range metas {
		switch {
		case errors.Is(errs[i], ErrNotFound):
			// Being written, or deleted since the ids were listed.
		case errs[i] != nil:
			bad = append(bad, errs[i])
		default:
			out = append(out, m)
		}
	}
	if len(bad) > 0 {
		return out, bad
	}
	return out, nil
}

// parallel runs fn(0) .. fn(n-1), workers at a time.
func parallel(n, workers int, fn func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for i := range next {
				fn(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// Updater is a store whose published metadata can be amended: a deduplicated
// bug's first bundle learns how many crashes it stands for, and a bundle
// gains its full backtrace once gdb has read the stored core.
type Updater interface {
	// Update rewrites a bundle's metadata.json atomically with what fn
	// changes; concurrent updates of one store are serialised.
	Update(ctx context.Context, id string, fn func(*bundle.Metadata) error) error
}

// Writer receives one bundle's files. Files may be written concurrently.
type Writer interface {
	// Create starts a file of the bundle; name is bundle-relative, with
	// slashes (bundle.CoreFile, "sysroot/usr/lib/libc.so.6").
	Create(name string) (io.WriteCloser, error)
	// Commit writes metadata.json last, makes everything durable, and
	// publishes the bundle atomically.
	Commit(ctx context.Context, m *bundle.Metadata) error
	// Abort discards everything written so far. It is safe after Commit.
	Abort() error
}

// Usage is what a store holds, and for stores on a local filesystem what
// that filesystem has left.
type Usage struct {
	Bundles int
	Bytes   int64
	// FSSize and FSFree are 0 for stores that do not live on a local
	// filesystem.
	FSSize int64
	FSFree int64
}

// Retention bounds what a local store keeps, as systemd-coredump does:
// oldest bundles go first until every bound holds.
type Retention struct {
	// MaxAge removes bundles older than this; 0 keeps them forever.
	MaxAge time.Duration
	// MaxUse caps the bytes all bundles may take together; 0 is no cap.
	MaxUse int64
	// KeepFree is the space to leave free on the store's filesystem; 0
	// leaves nothing in particular.
	KeepFree int64
}

// Presigner is what a store that can hand out download links implements
// (S3 does, a local directory does not): alerts carry a link an SRE can
// open without credentials. Callers type-assert a Store to it.
type Presigner interface {
	// PresignGet returns a URL that downloads one file of a bundle until
	// expiry, which is clamped to 1 s..7 days (the S3 signature's limit).
	PresignGet(ctx context.Context, id, name string, expiry time.Duration) (string, error)
}

// Options carry what a store's URL cannot say: how to reach and sign in
// to an S3 service.
type Options struct {
	S3 S3Options
}

// Open returns the store a URL names: file:///path (or a plain absolute
// path) for a local directory, s3://bucket/prefix for an S3 bucket
// reached as o.S3 says.
func Open(rawURL string, o Options) (Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("store URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "file", "":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("store URL %q: a file store needs an absolute path (file:///var/lib/corecatch/bundles)", rawURL)
		}
		if u.Path == "" || u.Path[0] != '/' {
			return nil, fmt.Errorf("store URL %q: the path must be absolute", rawURL)
		}
		return NewFile(u.Path), nil
	case "s3":
		if u.Host == "" {
			return nil, fmt.Errorf("store URL %q: name the bucket (s3://bucket/prefix)", rawURL)
		}
		return NewS3(u.Host, strings.Trim(u.Path, "/"), o.S3)
	default:
		return nil, fmt.Errorf("store URL %q: unknown scheme %q (supported: file://, s3://)", rawURL, u.Scheme)
	}
}

// Pull writes a bundle of st into dir the way debuggers want it (see
// bundle.Materialize) and returns its metadata; PullWith says how.
func Pull(ctx context.Context, st Store, id, dir string) (*bundle.Metadata, error) {
	return PullWith(ctx, st, id, dir, PullOptions{})
}
