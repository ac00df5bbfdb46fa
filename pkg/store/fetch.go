package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// Ranger is a store whose files can be read in byte ranges of one version
// (S3: ranged GETs with If-Match). Pull then fetches a large core with
// several requests at once, and continues an interrupted pull where it
// stopped instead of starting over.
type Ranger interface {
	// Version returns a file's size and a tag that changes with its
	// content.
	Version(ctx context.Context, id, name string) (Version, error)
	// OpenRange reads n bytes of the file from off, failing when its
	// content is no longer v.
	OpenRange(ctx context.Context, id, name string, v Version, off, n int64) (io.ReadCloser, error)
}

// Version names one content of a file: a pull continued later must read
// the same bytes it started with.
type Version struct {
	Size int64
	ETag string
}

// Progress is told how a pull advances, for a progress bar.
type Progress interface {
	// Start gives the bytes the pull reads in all, and how many of them an
	// earlier, interrupted pull already kept.
	Start(total, done int64)
	// Add counts bytes read since.
	Add(n int64)
}

// PullOptions tune PullWith; the zero value pulls with the defaults and
// reports no progress.
type PullOptions struct {
	// Workers is how many ranged reads of the core run at once (default
	// DefaultPullWorkers).
	Workers int
	// ChunkBytes is the size of one ranged read (default
	// DefaultPullChunk). Memory stays under about 4 x Workers x ChunkBytes.
	ChunkBytes int64
	Progress   Progress
}

// Defaults of PullOptions: 8 reads of 8 MiB in flight fill a fast link to
// an S3 service and keep a pull's buffers under 300 MiB.
const (
	DefaultPullWorkers = 8
	DefaultPullChunk   = 8 << 20
)

// PartSuffix ends the name of an interrupted pull's data beside its target
// (.core.zst.part, and .core.zst.part.json for which version it holds).
const PartSuffix = ".part"

// fetchRetries is how often one range is asked again after a failed read,
// keeping what arrived.
const fetchRetries = 4

// PullWith writes a bundle of st into dir as Pull does. From a Ranger, the
// core arrives by o.Workers parallel ranged reads, is decompressed while it
// arrives (in order) into a sparse dir/core, and is also kept compressed in
// dir/.core.zst.part until the pull is whole, so that a pull interrupted
// (killed, a lost link) and run again into the same dir fetches only the
// rest.
func PullWith(ctx context.Context, st Store, id, dir string, o PullOptions) (*bundle.Metadata, error) {
	m, err := st.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if o.Workers < 1 {
		o.Workers = DefaultPullWorkers
	}
	if o.ChunkBytes < 1 {
		o.ChunkBytes = DefaultPullChunk
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	var total int64
	for _, f := range m.Files {
		if f.Stored != "" {
			total += f.Size
		}
	}
	var core *partReader
	if r, ok := st.(Ranger); ok && m.Core.StoredBytes > 0 {
		if core, err = openPart(ctx, r, id, dir, o); err != nil {
			return nil, err
		}
		defer core.Close()
		total += core.v.Size
	} else {
		total += m.Core.StoredBytes
	}
	if o.Progress != nil {
		kept := int64(0)
		if core != nil {
			kept = core.kept
		}
		o.Progress.Start(total, kept)
	}
	open := func(name string) (io.ReadCloser, error) {
		if name == bundle.CoreFile && core != nil {
			return io.NopCloser(core), nil
		}
		r, err := st.Open(ctx, id, name)
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("%w: %w", err, os.ErrNotExist)
		}
		if err != nil || o.Progress == nil {
			return r, err
		}
		return counting{r, o.Progress}, nil
	}
	err = bundle.Materialize(dir, m, open)
	if core != nil {
		err = core.finish(err)
	}
	if err != nil {
		return nil, fmt.Errorf("pull %s into %s: %w", id, dir, err)
	}
	return m, nil
}

// counting reports what passes through to a Progress.
type counting struct {
	io.ReadCloser
	p Progress
}

func (c counting) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.p.Add(int64(n))
	return n, err
}

// partState says which bundle's core, in which version, a .part file
// holds a prefix of. Written once, when the part starts.
type partState struct {
	ID   string `json:"id"`
	ETag string `json:"etag"`
	Size int64  `json:"size"`
}

// partReader reads a bundle's core.zst: first the prefix an earlier pull
// kept in the part file, then the rest from the store, appending each
// chunk to the part file as it passes.
type partReader struct {
	v          Version
	kept       int64
	data, meta string
	f          *os.File
	local      *io.SectionReader
	remote     *rangeStream
	cur        *chunk
	pos        int
	writes     chan *chunk
	written    sync.WaitGroup
	writeErr   atomic.Pointer[error]
	closed     bool
}

// openPart opens the core of bundle id for pulling into dir, continuing
// the part file there when it holds the same version.
func openPart(ctx context.Context, r Ranger, id, dir string, o PullOptions) (*partReader, error) {
	v, err := r.Version(ctx, id, bundle.CoreFile)
	if err != nil {
		return nil, err
	}
	p := &partReader{v: v, data: filepath.Join(dir, "."+bundle.CoreFile+PartSuffix)}
	p.meta = p.data + ".json"
	want := partState{ID: id, ETag: v.ETag, Size: v.Size}
	var have partState
	if b, err := os.ReadFile(p.meta); err == nil && json.Unmarshal(b, &have) == nil && have == want {
		if fi, err := os.Stat(p.data); err == nil {
			p.kept = min(fi.Size(), v.Size)
		}
	}
	if p.f, err = os.OpenFile(p.data, os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return nil, fmt.Errorf("keep the download in %s: %w", p.data, err)
	}
	if err := p.f.Truncate(p.kept); err != nil {
		p.f.Close()
		return nil, fmt.Errorf("keep the download in %s: %w", p.data, err)
	}
	if p.kept == 0 {
		b, _ := json.Marshal(want)
		if err := os.WriteFile(p.meta, b, 0o600); err != nil {
			p.f.Close()
			return nil, fmt.Errorf("keep the download in %s: %w", p.meta, err)
		}
	}
	if _, err := p.f.Seek(p.kept, io.SeekStart); err != nil {
		p.f.Close()
		return nil, err
	}
	p.local = io.NewSectionReader(p.f, 0, p.kept)
	p.remote = fetchRanges(ctx, r, id, bundle.CoreFile, v, p.kept, o)
	p.writes = make(chan *chunk, 2*o.Workers)
	p.written.Add(1)
	go func() {
		defer p.written.Done()
		for c := range p.writes {
			if p.writeErr.Load() == nil {
				if _, err := p.f.Write(c.buf[:c.n]); err != nil {
					err = fmt.Errorf("keep the download in %s: %w", p.data, err)
					p.writeErr.Store(&err)
				}
			}
			c.release()
		}
	}()
	return p, nil
}

// Read returns the kept prefix, then the store's bytes in order.
func (p *partReader) Read(b []byte) (int, error) {
	if p.local != nil {
		n, err := p.local.Read(b)
		if err == io.EOF {
			p.local, err = nil, nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
	if e := p.writeErr.Load(); e != nil {
		return 0, *e
	}
	for p.cur == nil || p.pos == p.cur.n {
		if p.cur != nil {
			p.cur.release()
			p.cur = nil
		}
		c, err := p.remote.next()
		if err != nil {
			return 0, err
		}
		c.refs.Add(1)
		p.writes <- c
		p.cur, p.pos = c, 0
	}
	n := copy(b, p.cur.buf[p.pos:p.cur.n])
	p.pos += n
	return n, nil
}

// Close stops the fetch and waits until the part file has what arrived.
func (p *partReader) Close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	if p.cur != nil {
		p.cur.release()
		p.cur = nil
	}
	p.remote.close()
	close(p.writes)
	p.written.Wait()
	return p.f.Close()
}

// finish ends a pull whose materialization returned err: a whole pull
// removes the part; a failed one keeps it for the next run, unless it was
// continued from an earlier run and failed other than by reading from the
// store (a damaged prefix, say), which the next run must not reuse.
func (p *partReader) finish(err error) error {
	cerr := p.Close()
	var fe *fetchError
	switch {
	case err == nil && cerr == nil:
		os.Remove(p.data)
		os.Remove(p.meta)
		return nil
	case err == nil:
		return cerr
	case p.kept > 0 && !errors.As(err, &fe) && !errors.Is(err, context.Canceled):
		os.Remove(p.data)
		os.Remove(p.meta)
		return fmt.Errorf("%w (the pull had continued an earlier one: its part is removed, run it again)", err)
	}
	return fmt.Errorf("%w (what arrived is kept in %s: run the same pull again to continue)", err, p.data)
}

// fetchError is a failure to read the store, after retries: what arrived
// stays valid.
type fetchError struct{ err error }

func (e *fetchError) Error() string { return e.err.Error() }
func (e *fetchError) Unwrap() error { return e.err }

// chunk is one ranged read's bytes; its buffer returns to the pool when
// every holder (the reader, the part writer) has released it.
type chunk struct {
	buf  []byte
	n    int
	refs atomic.Int32
	pool chan []byte
}

func (c *chunk) release() {
	if c.refs.Add(-1) == 0 {
		c.pool <- c.buf
	}
}

// rangeStream fetches a file's ranges with parallel workers and hands them
// out in order. A bounded pool of buffers bounds its memory.
type rangeStream struct {
	ctx    context.Context
	cancel context.CancelFunc
	order  chan chan result
	wg     sync.WaitGroup
}

type result struct {
	c   *chunk
	err error
}

type job struct {
	off, n int64
	res    chan result
}

func fetchRanges(ctx context.Context, r Ranger, id, name string, v Version, from int64, o PullOptions) *rangeStream {
	ctx, cancel := context.WithCancel(ctx)
	window := 2 * o.Workers
	s := &rangeStream{ctx: ctx, cancel: cancel, order: make(chan chan result, window)}
	// Buffers: the window's, the one the reader holds, and those waiting
	// for the part writer; allocated on first use.
	pool := make(chan []byte, 2*window+2)
	for range cap(pool) {
		pool <- nil
	}
	jobs := make(chan job)
	go func() {
		defer close(s.order)
		defer close(jobs)
		for off := from; off < v.Size; off += o.ChunkBytes {
			j := job{off: off, n: min(o.ChunkBytes, v.Size-off), res: make(chan result, 1)}
			select {
			case s.order <- j.res:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return
			}
		}
	}()
	for range o.Workers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for j := range jobs {
				var buf []byte
				select {
				case buf = <-pool:
				case <-ctx.Done():
					j.res <- result{err: ctx.Err()}
					continue
				}
				if buf == nil {
					buf = make([]byte, o.ChunkBytes)
				}
				c := &chunk{buf: buf, pool: pool}
				c.refs.Store(1)
				var err error
				c.n, err = fetchRange(ctx, r, id, name, v, j.off, buf[:j.n], o.Progress)
				if err != nil {
					c.release()
					j.res <- result{err: err}
					continue
				}
				j.res <- result{c: c}
			}
		}()
	}
	return s
}

// fetchRange fills buf from off, asking again from where a read broke off.
func fetchRange(ctx context.Context, r Ranger, id, name string, v Version, off int64, buf []byte, p Progress) (int, error) {
	got := 0
	var err error
	for attempt := 0; attempt <= fetchRetries && got < len(buf); attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			case <-ctx.Done():
				return got, ctx.Err()
			}
		}
		var rc io.ReadCloser
		rc, err = r.OpenRange(ctx, id, name, v, off+int64(got), int64(len(buf)-got))
		if err != nil {
			if errors.Is(err, errChanged) || ctx.Err() != nil {
				break
			}
			continue
		}
		for got < len(buf) {
			var n int
			n, err = rc.Read(buf[got:])
			got += n
			if p != nil && n > 0 {
				p.Add(int64(n))
			}
			if err != nil {
				break
			}
		}
		rc.Close()
		if got == len(buf) {
			return got, nil
		}
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	}
	if ctx.Err() != nil {
		return got, ctx.Err()
	}
	return got, &fetchError{fmt.Errorf("read %s of bundle %s at %d: %w", name, id, off+int64(got), err)}
}

// errChanged is what a Ranger's OpenRange wraps when the file is no longer
// the version a pull started with.
var errChanged = errors.New("the file changed while it was being pulled: run the pull again")

// next returns the next chunk in order, or io.EOF after the last.
func (s *rangeStream) next() (*chunk, error) {
	res, ok := <-s.order
	if !ok {
		if err := s.ctx.Err(); err != nil {
			return nil, err
		}
		return nil, io.EOF
	}
	select {
	case r := <-res:
		if r.err != nil {
			return nil, r.err
		}
		return r.c, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

// close stops the workers and waits for them.
func (s *rangeStream) close() {
	s.cancel()
	s.wg.Wait()
}
