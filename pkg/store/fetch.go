package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

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
	// Add counts bytes read since; negative when a read that broke off
	// is asked again from its start.
	Add(n int64)
}

// PullOptions tune PullWith; the zero value pulls with the defaults and
// reports no progress.
type PullOptions struct {
	// Workers is how many ranged reads of the core run at once (default
	// DefaultPullWorkers): frames of its seek table, each with its own
	// decoder (a 4 MiB window), or chunks of a core.zst without one.
	Workers int
	// ChunkBytes is the size of one ranged read of a core.zst without a
	// seek table (default DefaultPullChunk): the reads in flight take
	// about (Workers+4) x ChunkBytes of memory.
	ChunkBytes int64
	Progress   Progress
}

// Defaults of PullOptions: 8 reads in flight fill a fast link to an S3
// service; 4 MiB chunks keep a table-less pull's buffers near 48 MiB.
const (
	DefaultPullWorkers = 8
	DefaultPullChunk   = 4 << 20
)

// PartSuffix ends the names of an interrupted pull's core beside its
// target: .core.part (the frames decoded so far, in place) and
// .core.part.log (which bundle and version, then each frame made whole).
const PartSuffix = ".part"

// fetchRetries is how often one range is asked again after a failed read,
// keeping what arrived.
const fetchRetries = 4

// PullWith writes a bundle of st into dir as Pull does. From a Ranger, the
// core's frames (bundle.CoreFrameBytes of raw core each, listed by the
// seek table at the end of core.zst) arrive by o.Workers parallel ranged
// reads, each decoded as it arrives straight to its place in a sparse
// dir/.core.part, renamed to dir/core once whole. Each frame decoded whole
// (its checksum verified) is recorded in dir/.core.part.log, so that a
// pull interrupted (killed, a lost link) and run again into the same dir
// fetches only the frames not done. A core.zst without a seek table
// arrives in order by parallel ranged reads of chunks, and continues from
// its last whole frame.
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
	r, ranged := st.(Ranger)
	ranged = ranged && m.Core.StoredBytes > 0
	var core *corePull
	if ranged {
		if core, err = startCore(ctx, r, id, dir); err != nil {
			return nil, err
		}
		total += core.v.Size
	} else {
		total += m.Core.StoredBytes
	}
	if o.Progress != nil {
		done := int64(0)
		if core != nil {
			done = core.done()
		}
		o.Progress.Start(total, done)
	}
	open := func(name string) (io.ReadCloser, error) {
		r, err := st.Open(ctx, id, name)
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("%w: %w", err, os.ErrNotExist)
		}
		if err != nil || o.Progress == nil {
			return r, err
		}
		return counting{r, o.Progress}, nil
	}
	if ranged {
		err = core.run(ctx, r, o)
		if err == nil {
			err = bundle.MaterializeFiles(dir, m, open)
		}
	} else {
		err = bundle.Materialize(dir, m, open)
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

// coreVersion names the core a part holds: bundle ID's core.zst in
// version ETag/Size. It is the first line of the part's log.
type coreVersion struct {
	ID   string `json:"id"`
	ETag string `json:"etag"`
	Size int64  `json:"size"`
}

// coreState is how much of its core a part holds. With a seek table,
// Frames has a '1' for each frame decoded whole into place; without, the
// part holds the first Raw bytes, decoded from the first Comp bytes of
// core.zst, which end a frame.
type coreState struct {
	Frames    string
	Comp, Raw int64
}

// The part's log records progress by appending a line, "frame I" or
// "upto COMP RAW": a kill can cut only the last line, which replay drops,
// so the log never loses what was recorded before.
const (
	logFrame = "frame %d"
	logUpto  = "upto %d %d"
)

// replay reads a part's log: the state it records, if it is of core v.
func replay(data []byte, v coreVersion, frames int) (coreState, bool) {
	lines := strings.Split(string(data), "\n")
	lines = lines[:len(lines)-1] // after the last newline: nothing, or a cut line
	var have coreVersion
	if len(lines) == 0 || json.Unmarshal([]byte(lines[0]), &have) != nil || have != v {
		return coreState{}, false
	}
	st := coreState{Frames: strings.Repeat("0", frames)}
	for _, l := range lines[1:] {
		var i int
		var comp, raw int64
		if n, _ := fmt.Sscanf(l, logFrame, &i); n == 1 && i >= 0 && i < frames {
			st.Frames = st.Frames[:i] + "1" + st.Frames[i+1:]
		} else if n, _ := fmt.Sscanf(l, logUpto, &comp, &raw); n == 2 && comp <= v.Size && raw >= 0 {
			st.Comp, st.Raw = comp, raw
		}
	}
	return st, true
}

// corePull is one pull of a core into dir/core through its part.
type corePull struct {
	id, dir   string
	part, log string
	v         Version
	state     coreState
	resumed   bool // state comes from an earlier pull's log
	// frames is core.zst's seek table; nil for a core.zst without one.
	frames []bundle.SeekEntry
	mu     sync.Mutex // over state and logf, once frames are pulled in parallel
	logf   *os.File
}

// startCore finds where a pull of the core of id into dir starts: where
// an earlier one of the same version stopped, or at 0.
func startCore(ctx context.Context, r Ranger, id, dir string) (*corePull, error) {
	v, err := r.Version(ctx, id, bundle.CoreFile)
	if err != nil {
		return nil, err
	}
	c := &corePull{id: id, dir: dir, v: v, part: filepath.Join(dir, ".core"+PartSuffix)}
	c.log = c.part + ".log"
	if c.frames, err = seekTable(ctx, r, id, v); errors.Is(err, bundle.ErrNoSeekTable) {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	c.state.Frames = strings.Repeat("0", len(c.frames))
	if data, err := os.ReadFile(c.log); err == nil {
		if st, ok := replay(data, c.version(), len(c.frames)); ok {
			if fi, err := os.Stat(c.part); err == nil && fi.Size() >= st.Raw {
				c.state, c.resumed = st, true
			}
		}
	}
	return c, nil
}

func (c *corePull) version() coreVersion {
	return coreVersion{ID: c.id, ETag: c.v.ETag, Size: c.v.Size}
}

// openLog starts the part's log afresh, or continues it.
func (c *corePull) openLog() error {
	if !c.resumed {
		b, _ := json.Marshal(c.version())
		if err := os.WriteFile(c.log, append(b, '\n'), 0o600); err != nil {
			return fmt.Errorf("record the pull's progress in %s: %w", c.log, err)
		}
	}
	f, err := os.OpenFile(c.log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("record the pull's progress in %s: %w", c.log, err)
	}
	c.logf = f
	return nil
}

// mark appends one line to the part's log, in one write.
func (c *corePull) mark(format string, args ...any) error {
	if _, err := fmt.Fprintf(c.logf, format+"\n", args...); err != nil {
		return fmt.Errorf("record the pull's progress in %s: %w", c.log, err)
	}
	return nil
}

// seekTable reads core.zst's seek table with two ranged reads.
func seekTable(ctx context.Context, r Ranger, id string, v Version) ([]bundle.SeekEntry, error) {
	if v.Size < bundle.SeekFooterBytes {
		return nil, bundle.ErrNoSeekTable
	}
	tail := func(n int64) ([]byte, error) {
		rc, err := r.OpenRange(ctx, id, bundle.CoreFile, v, v.Size-n, n)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		b := make([]byte, n)
		_, err = io.ReadFull(rc, b)
		return b, err
	}
	footer, err := tail(bundle.SeekFooterBytes)
	if err != nil {
		return nil, err
	}
	n, err := bundle.SeekTableSize(footer)
	if err != nil {
		return nil, err
	}
	if n > v.Size {
		return nil, fmt.Errorf("%s of bundle %s: a seek table longer than the file", bundle.CoreFile, id)
	}
	table, err := tail(n)
	if err != nil {
		return nil, err
	}
	frames, err := bundle.ParseSeekTable(table, v.Size)
	if err != nil {
		return nil, fmt.Errorf("%s of bundle %s: %w", bundle.CoreFile, id, err)
	}
	return frames, nil
}

// done is how many compressed bytes of the core an earlier pull did.
func (c *corePull) done() int64 {
	if c.frames == nil {
		return c.state.Comp
	}
	var n int64
	for i, f := range c.frames {
		if c.state.Frames[i] == '1' {
			n += f.Compressed
		}
	}
	return n
}

// run fetches what is left of the core into the part, and renames the
// part to core at the end.
func (c *corePull) run(ctx context.Context, r Ranger, o PullOptions) error {
	if c.frames == nil {
		return c.runStream(ctx, r, o)
	}
	return c.runFrames(ctx, r, o)
}

// openPart opens the part at size bytes: an earlier pull's, or a new
// file when starting over (what a pull of another version left must go,
// as zero pages are not written). A new file, never one cut to 0 bytes:
// ext4 writes a file truncated to 0 back to disk when it is closed (its
// auto_da_alloc, for programs that rewrite a file in place), and that
// close held the end of a pull for the whole core's writeback (0.9 s of
// a 2 GiB pull).
func (c *corePull) openPart(size int64) (*os.File, error) {
	if !c.resumed {
		if err := os.Remove(c.part); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("start the core afresh in %s: %w", c.part, err)
		}
	}
	f, err := os.OpenFile(c.part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("write the core into %s: %w", c.part, err)
	}
	if c.resumed || size > 0 {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("write the core into %s: %w", c.part, err)
		}
	}
	return f, nil
}

// runFrames pulls the frames of the seek table not done yet, o.Workers at
// once, each by its own ranged read decoded as it arrives straight to its
// place in the part, and records each frame done.
func (c *corePull) runFrames(ctx context.Context, r Ranger, o PullOptions) error {
	offs := make([]int64, len(c.frames)+1) // compressed offsets; raws below
	raws := make([]int64, len(c.frames)+1)
	for i, fr := range c.frames {
		offs[i+1], raws[i+1] = offs[i]+fr.Compressed, raws[i]+fr.Raw
	}
	f, err := c.openPart(raws[len(c.frames)])
	if err != nil {
		return err
	}
	defer f.Close()
	if err := c.openLog(); err != nil {
		return err
	}
	defer c.logf.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan int)
	go func() {
		defer close(jobs)
		for i := range c.frames {
			if c.state.Frames[i] == '1' {
				continue
			}
			select {
			case jobs <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	out := &serialWriter{f: f}
	var wg sync.WaitGroup
	var first atomic.Pointer[error]
	for range min(o.Workers, len(c.frames)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
			if err != nil {
				first.CompareAndSwap(nil, &err)
				cancel()
				return
			}
			defer dec.Close()
			for i := range jobs {
				err := c.pullFrame(ctx, r, dec, out, i, offs[i], raws[i], o.Progress)
				if err == nil {
					c.mu.Lock()
					c.state.Frames = c.state.Frames[:i] + "1" + c.state.Frames[i+1:]
					err = c.mark(logFrame, i)
					c.mu.Unlock()
				}
				if err != nil {
					first.CompareAndSwap(nil, &err)
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	err = ctx.Err()
	if e := first.Load(); e != nil {
		err = *e
	}
	var fe *fetchError
	switch {
	case err == nil:
		return c.complete(f)
	case errors.As(err, &fe) || errors.Is(err, context.Canceled):
		return fmt.Errorf("%w (%s of core.zst are done in %s: run the same pull again to continue)", err, bundle.HumanBytes(c.done()), c.part)
	}
	return err
}

// pullFrame fetches frame i (at compressed offset off, raw offset rawOff)
// and decodes it into place, asking again when the read breaks off.
func (c *corePull) pullFrame(ctx context.Context, r Ranger, dec *zstd.Decoder, out io.WriterAt, i int, off, rawOff int64, p Progress) error {
	fr := c.frames[i]
	var err error
	for attempt := 0; attempt <= fetchRetries; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		var rc io.ReadCloser
		if rc, err = r.OpenRange(ctx, c.id, bundle.CoreFile, c.v, off, fr.Compressed); err != nil {
			if errors.Is(err, errChanged) || ctx.Err() != nil {
				return err
			}
			continue
		}
		body := &readErr{r: rc, p: p}
		var n int64
		if err = dec.Reset(body); err == nil {
			// A retry rewrites the same bytes at the same places, so what
			// an attempt that broke off left behind is never wrong.
			n, err = dec.WriteTo(&bundle.SparseWriter{W: out, Off: rawOff})
		}
		rc.Close()
		if err == nil && n != fr.Raw {
			err = fmt.Errorf("frame %d of %s holds %d bytes, its seek table says %d", i, bundle.CoreFile, n, fr.Raw)
		}
		switch {
		case err == nil:
			return nil
		case body.err == nil:
			// Not the read: the frame itself is damaged.
			return fmt.Errorf("decompress frame %d of %s: %w (the bundle may be damaged; `zstd -t` tells)", i, bundle.CoreFile, err)
		case ctx.Err() != nil:
			return ctx.Err()
		}
		if p != nil {
			p.Add(-body.n) // counted again by the next attempt
		}
		err = body.err
	}
	return &fetchError{fmt.Errorf("read frame %d of %s of bundle %s: %w", i, bundle.CoreFile, c.id, err)}
}

// serialWriter lets one frame's decoder at a time write to the part. The
// kernel serializes buffered writes to one file anyway (ext4 holds the
// inode's lock for each), but its waiters spin on a CPU while the holder
// copies: on a machine of two CPUs that spinning took the CPU the other
// frames decode on. Waiting here parks the goroutine and frees the CPU.
type serialWriter struct {
	mu sync.Mutex
	f  *os.File
}

func (w *serialWriter) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.f.WriteAt(p, off)
}

// readErr remembers a read's failure, apart from a decoder's, and counts
// what arrived.
type readErr struct {
	r   io.Reader
	p   Progress
	n   int64
	err error
}

func (b *readErr) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	if b.p != nil && n > 0 {
		b.p.Add(int64(n))
	}
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// complete makes the whole part the core.
func (c *corePull) complete(f *os.File) error {
	if err := f.Close(); err != nil {
		return fmt.Errorf("write the core into %s: %w", c.part, err)
	}
	if err := os.Rename(c.part, filepath.Join(c.dir, "core")); err != nil {
		return err
	}
	os.Remove(c.log)
	return nil
}

// runStream fetches the rest of a core.zst without a seek table (one
// written before corecatch wrote them): its bytes in order by parallel
// ranged reads, decoded frame by frame into the part, each whole frame
// recorded.
func (c *corePull) runStream(ctx context.Context, r Ranger, o PullOptions) error {
	f, err := c.openPart(c.state.Raw)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := c.openLog(); err != nil {
		return err
	}
	defer c.logf.Close()
	stream := fetchRanges(ctx, r, c.id, bundle.CoreFile, c.v, c.state.Comp, o)
	defer stream.close()
	fr := &frames{src: &chunkReader{s: stream}, off: c.state.Comp}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
	if err != nil {
		return err
	}
	defer dec.Close()
	out := &bundle.SparseWriter{W: f, Off: c.state.Raw}
	for {
		frame, err := fr.next()
		if err == io.EOF {
			break
		}
		if err == nil {
			err = dec.Reset(frame)
		}
		if err == nil {
			_, err = dec.WriteTo(out)
		}
		if err != nil {
			var fe *fetchError
			if errors.As(err, &fe) || ctx.Err() != nil {
				return fmt.Errorf("%w (%s of the core are kept in %s: run the same pull again to continue)", err, bundle.HumanBytes(c.state.Raw), c.part)
			}
			return fmt.Errorf("decompress %s at %d: %w (the bundle may be damaged; `zstd -t` tells)", bundle.CoreFile, c.state.Comp, err)
		}
		c.state.Comp, c.state.Raw = fr.off, out.Off
		if err := c.mark(logUpto, c.state.Comp, c.state.Raw); err != nil {
			return err
		}
	}
	if c.state.Comp != c.v.Size {
		return fmt.Errorf("%s ends at %d of its %d bytes: the bundle is damaged", bundle.CoreFile, c.state.Comp, c.v.Size)
	}
	if err := f.Truncate(out.Off); err != nil {
		return fmt.Errorf("write the core into %s: %w", c.part, err)
	}
	return c.complete(f)
}

// chunkReader reads a rangeStream's chunks in order as one stream.
type chunkReader struct {
	s   *rangeStream
	cur *chunk
	pos int
}

func (c *chunkReader) Read(b []byte) (int, error) {
	for c.cur == nil || c.pos == c.cur.n {
		if c.cur != nil {
			c.cur.release()
			c.cur = nil
		}
		next, err := c.s.next()
		if err != nil {
			return 0, err
		}
		c.cur, c.pos = next, 0
	}
	n := copy(b, c.cur.buf[c.pos:c.cur.n])
	c.pos += n
	return n, nil
}

// frames cuts a zstd stream into its frames by their headers, without
// decoding them, counting the bytes it consumed (off, from the stream's
// start).
type frames struct {
	src io.Reader
	off int64
}

// zstd's framing (RFC 8878): a frame's magic, a skippable frame's magics.
const (
	frameMagic     = 0xFD2FB528
	skippableMagic = 0x184D2A50 // to 0x184D2A5F
)

// frame is one frame's bytes: its header, then each block's header and
// content, then its checksum.
type frame struct {
	fs       *frames
	pending  []byte // header bytes read, not yet passed on
	left     int64  // content bytes to pass on before the next header
	last     bool   // the last block's header was read
	checksum bool
	done     bool
}

func (fs *frames) read(b []byte) error {
	n, err := io.ReadFull(fs.src, b)
	fs.off += int64(n)
	return err
}

// next returns the next frame, or io.EOF at the stream's end.
func (fs *frames) next() (*frame, error) {
	hdr := make([]byte, 4, 18)
	if err := fs.read(hdr); err != nil {
		if err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("%s ends inside a frame header at %d", bundle.CoreFile, fs.off)
		}
		return nil, err
	}
	f := &frame{fs: fs}
	switch magic := binary.LittleEndian.Uint32(hdr); {
	case magic&0xFFFFFFF0 == skippableMagic:
		size := make([]byte, 4)
		if err := fs.read(size); err != nil {
			return nil, eofInFrame(err)
		}
		f.pending, f.left, f.last, f.done = append(hdr, size...), int64(binary.LittleEndian.Uint32(size)), true, true
		return f, nil
	case magic != frameMagic:
		return nil, fmt.Errorf("no zstd frame at %d of %s", fs.off-4, bundle.CoreFile)
	}
	desc := []byte{0}
	if err := fs.read(desc); err != nil {
		return nil, eofInFrame(err)
	}
	d := desc[0]
	single := d&0x20 != 0
	n := []int{0, 1, 2, 4}[d&3] // dictionary id
	n += []int{0, 2, 4, 8}[d>>6]
	if single && d>>6 == 0 {
		n++ // a one-byte content size
	}
	if !single {
		n++ // the window descriptor
	}
	rest := make([]byte, n)
	if err := fs.read(rest); err != nil {
		return nil, eofInFrame(err)
	}
	f.pending = append(append(hdr, d), rest...)
	f.checksum = d&4 != 0
	return f, nil
}

func eofInFrame(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%s ends inside a frame: %w", bundle.CoreFile, io.ErrUnexpectedEOF)
	}
	return err
}

// Read passes the frame's bytes on, and io.EOF after its last.
func (f *frame) Read(b []byte) (int, error) {
	for {
		switch {
		case len(f.pending) > 0:
			n := copy(b, f.pending)
			f.pending = f.pending[n:]
			return n, nil
		case f.left > 0:
			n, err := f.fs.src.Read(b[:min(int64(len(b)), f.left)])
			f.fs.off += int64(n)
			f.left -= int64(n)
			if err == io.EOF {
				err = eofInFrame(err)
			}
			return n, err
		case f.done:
			return 0, io.EOF
		case f.last:
			f.done = true
			if f.checksum {
				f.left = 4
			}
		default:
			bh := make([]byte, 3)
			if err := f.fs.read(bh); err != nil {
				return 0, eofInFrame(err)
			}
			h := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
			f.last = h&1 != 0
			f.pending, f.left = bh, int64(h>>3)
			switch (h >> 1) & 3 {
			case 1: // RLE: one byte repeated
				f.left = 1
			case 3:
				return 0, fmt.Errorf("a reserved block type at %d of %s", f.fs.off-3, bundle.CoreFile)
			}
		}
	}
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
	window := o.Workers + 2
	s := &rangeStream{ctx: ctx, cancel: cancel, order: make(chan chan result, window)}
	// Buffers: the window's, the dispatched one and the one the reader
	// holds; allocated on first use.
	pool := make(chan []byte, window+2)
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
