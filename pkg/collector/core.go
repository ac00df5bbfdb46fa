package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/klauspost/compress/zstd"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// chunk is the read size from the kernel's pipe. The helper enlarges the
// pipe to the same size, so one read takes what the kernel wrote in one go.
const chunk = 1 << 20

// readAhead is how many chunks the pipe reader may fill ahead of the
// compressor.
const readAhead = 4

// quotaMargin is how far below the room left in the store the helper stops
// feeding the compressor: the encoder compresses synchronously, so what
// lands after that is at most the block it is filling and the frame's end.
const quotaMargin = 1 << 20

// space is the store's room for the bundle (store.Space): what it may take,
// and the oldest bundles it may delete to take more.
type space interface {
	Room() int64
	MaxRoom() int64
	FreeOldest(ctx context.Context) (string, error)
}

// coreStream copies a core from the kernel's pipe through zstd into the
// store, never holding more than a few chunks of it in memory.
type coreStream struct {
	// limit is how many raw bytes to keep; negative keeps all. limitReason
	// is the truncation reason when the limit cuts the core.
	limit       int64
	limitReason string
	// space bounds what may be stored; nil is unbounded. freed lists the
	// older bundles deleted to make room for this core.
	space space
	freed []string
	// files is what the bundle's captured files have charged to the same
	// room (charge). roomMu serialises makeRoom between the core and the
	// capture, and guards freed.
	files  atomic.Int64
	roomMu sync.Mutex
	// encoding is set while a core is compressed into the store: the
	// encoder's block in flight (quotaMargin) is then counted as taken.
	encoding atomic.Bool
	// level is the zstd effort.
	level zstd.EncoderLevel

	layout coreLayout
	out    countingWriter
	enc    *bundle.CoreWriter
	core   bundle.Core
}

func newCoreStream(limit int64, limitReason string, level zstd.EncoderLevel) *coreStream {
	s := &coreStream{limit: limit, limitReason: limitReason, level: level}
	s.core.Compression = "zstd"
	return s
}

// countingWriter counts what reaches the store and remembers the first
// write error, so that a full disk stops the keeping, not the draining.
type countingWriter struct {
	w   io.Writer
	n   atomic.Int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	if err != nil {
		c.err = err
	}
	return n, err
}

// run reads in to its end. Bytes past the limit, past the store's room or
// after a write error are read and dropped at pipe speed: the kernel holds
// the crashed process until the pipe is drained or closed, and a drained
// pipe gives the raw size for the record. out may be nil when nothing is to
// be kept. run returns only read errors; keeping errors end up in the core
// record as a truncation reason.
func (s *coreStream) run(in io.Reader, out io.Writer) error {
	keeping := out != nil && s.limit != 0
	if keeping {
		s.out.w = out
		enc, err := bundle.NewCoreWriter(&s.out, s.level)
		if err != nil {
			return fmt.Errorf("start zstd: %w", err)
		}
		s.enc = enc
		s.encoding.Store(true)
	}
	// A reader goroutine keeps draining the pipe while the chunk before is
	// compressed: the kernel, which blocks whenever the pipe is full, keeps
	// dumping meanwhile. readAhead chunks bound the memory this takes.
	type chunkRead struct {
		buf []byte
		n   int
		err error
	}
	free := make(chan []byte, readAhead)
	for range readAhead {
		free <- make([]byte, chunk)
	}
	full := make(chan chunkRead, readAhead)
	go func() {
		defer close(full)
		for {
			buf := <-free
			n, err := in.Read(buf)
			if err != nil && (errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EAGAIN)) {
				err = nil
			}
			full <- chunkRead{buf, n, err}
			if err != nil {
				return
			}
		}
	}()
	for r := range full {
		if r.n > 0 {
			p := r.buf[:r.n]
			s.layout.feed(p)
			s.core.RawBytes += int64(r.n)
			if keeping {
				keeping = s.keep(p)
			}
		}
		free <- r.buf
		if errors.Is(r.err, io.EOF) {
			return nil
		}
		if r.err != nil {
			return fmt.Errorf("read core from the kernel: %w", r.err)
		}
	}
	return nil
}

// keep compresses p, or the part of it within the limit, and reports
// whether later chunks should still be kept.
func (s *coreStream) keep(p []byte) bool {
	if !s.makeRoom(0) {
		s.truncate(bundle.ReasonQuota)
		return false
	}
	if s.limit > 0 && s.core.KeptBytes+int64(len(p)) > s.limit {
		p = p[:s.limit-s.core.KeptBytes]
	}
	if _, err := s.enc.Write(p); err != nil {
		s.truncate(writeReason(err))
		return false
	}
	s.core.KeptBytes += int64(len(p))
	if s.limit > 0 && s.core.KeptBytes >= s.limit {
		s.truncate(s.limitReason)
		return false
	}
	return true
}

// makeRoom reports whether the store has room for another chunk of the
// core and extra more bytes, deleting the oldest bundles while it has not:
// a new crash is worth more than the oldest one kept. That is retention's
// own rule (see store.Space): what is counted is what the bundle has
// written, so nothing reserved in advance, and no hole of a sparse file,
// deletes a bundle.
func (s *coreStream) makeRoom(extra int64) bool {
	if s.space == nil {
		return true
	}
	s.roomMu.Lock()
	defer s.roomMu.Unlock()
	need := s.out.n.Load() + s.files.Load() + extra
	if s.encoding.Load() {
		need += quotaMargin
	}
	if most := s.space.MaxRoom(); most >= 0 && need > most {
		return false // deleting every older bundle would not be enough
	}
	for room := s.space.Room(); room >= 0 && need > room; room = s.space.Room() {
		id, err := s.space.FreeOldest(context.Background())
		if err != nil || id == "" {
			return false
		}
		s.freed = append(s.freed, id)
	}
	return true
}

// charge takes n bytes of the store's room for a captured file (its data
// bytes) and reports whether they fit, room made as for the core. The core
// stream, which may run at the same time, counts them as taken.
func (s *coreStream) charge(n int64) bool {
	if !s.makeRoom(n) {
		return false
	}
	s.files.Add(n)
	return true
}

// freedIDs returns the bundles deleted to make room for this one.
func (s *coreStream) freedIDs() []string {
	s.roomMu.Lock()
	defer s.roomMu.Unlock()
	return slices.Clone(s.freed)
}

func writeReason(err error) string {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return bundle.ReasonDiskFull
	}
	return bundle.ReasonError
}

func (s *coreStream) truncate(reason string) {
	if !s.core.Truncated {
		s.core.Truncated, s.core.TruncateReason = true, reason
	}
}

// finish ends the zstd frame and returns the record of the core. A core
// shorter than its own program headers promise is truncated even when every
// byte the kernel sent was kept.
func (s *coreStream) finish() (bundle.Core, error) {
	var err error
	if s.limit == 0 && s.core.RawBytes > 0 {
		s.truncate(s.limitReason)
	}
	if s.enc == nil {
		s.core.Compression = ""
	} else {
		if cerr := s.enc.Close(); cerr != nil && s.out.err == nil {
			err = fmt.Errorf("finish core.zst: %w", cerr)
			s.truncate(bundle.ReasonError)
		}
		if s.out.err != nil {
			s.truncate(writeReason(s.out.err))
			err = fmt.Errorf("write core.zst: %w", s.out.err)
		}
	}
	s.core.StoredBytes = s.out.n.Load()
	s.core.ExpectedBytes = s.layout.expected
	if exp := s.core.ExpectedBytes; exp > 0 && s.core.RawBytes < exp {
		s.truncate(bundle.ReasonShort)
	}
	return s.core, err
}
