package collector

import (
	"context"
	"errors"
	"syscall"

	"github.com/corecatch/corecatch/pkg/analysis"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"

	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Crash storms are decided in the spool, shared by the helpers of one node:
// each helper is its own short-lived process, so the state lives in small
// flock-ed files (spool.Dedup, Rate, Slot), and a helper's locks go when it
// exits, however it exits.

// readRecord reads a locked record file, and the size rewrite must cut it
// from (all of it when the read failed: its size is not known).
func readRecord(f *os.File) (data []byte, size int) {
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, math.MaxInt
	}
	return data, len(data)
}

// rewrite replaces a locked file's content of old bytes: written over,
// then cut to its length when it is shorter (a record mostly keeps its
// length, and a truncate is a metadata change ext4 journals). Never cut to
// 0 first: ext4 flushes a file truncated to 0 at its close
// (auto_da_alloc), milliseconds a refused crash waits on.
func rewrite(f *os.File, old int, data []byte) error {
	if _, err := f.WriteAt(data, 0); err != nil {
		return err
	}
	if len(data) >= old {
		return nil
	}
	return f.Truncate(int64(len(data)))
}

// claimTimeout bounds the cluster-wide claim, made while the kernel holds
// the crasher; past it the helper decides for its node alone.
const claimTimeout = 2 * time.Second

// stormReason decides whether a crash's core is kept: "" keeps it, else it
// is the reason the core is drained. A crash of a bug seen within its dedup
// window (on this node, or with claimer on any node) is counted against
// the bundle that keeps the bug's core (m.Dedup); a first crash beyond the
// node's per-minute allowance of whole cores is rate-limited and does not
// open a window on this node, so the next crash of its bug may keep a core.
// The rules are decide.go's; this counts the crash in the spool.
func stormReason(ctx context.Context, cfg *config.Config, claimer Claimer, m *bundle.Metadata, exeID string) string {
	now := time.Now()
	warn := func(w string) { m.Warnings = append(m.Warnings, w) }
	allow := func() (bool, error) { return takeRate(spool.Open(cfg.Spool), cfg.Collect.MaxCoresPerMinute, now) }
	key, window := dedupKey(cfg.Dedup, m.Pod, m.Workload, exeID, m.Signature)
	if window <= 0 {
		ok, err := allow()
		if err != nil {
			warn(err.Error())
		}
		if !ok {
			return bundle.ReasonRateLimit
		}
		return ""
	}
	var claim func() (string, error)
	if claimer != nil {
		claim = func() (string, error) {
			cctx, cancel := context.WithTimeout(ctx, claimTimeout)
			defer cancel()
			return claimer.Claim(cctx, key, window, m.ID, now)
		}
	}
	holder := func() (string, error) { return windowHolder(m.ID, claim, allow, warn) }
	of, count, until, err := claimDedup(spool.Open(cfg.Spool), key, m.ID, window, now, holder)
	if err != nil {
		warn(err.Error())
		return ""
	}
	var reason string
	reason, m.Dedup = dedupOutcome(key, of, count, until)
	return reason
}

// claimDedup counts a crash of the bug key. The first crash of a window on
// this node asks holder who keeps the bug's core: itself (of == ""), a
// crash on another node (of is its id), or nobody, rate-limited (count 0).
// Later ones get the holder's id and their ordinal in the window.
func claimDedup(sp spool.Spool, key, id string, window time.Duration, now time.Time, holder func() (string, error)) (of string, count int, until time.Time, err error) {
	f, err := sp.Dedup(key)
	if err != nil {
		return "", 0, time.Time{}, fmt.Errorf("dedup record: %w", err)
	}
	defer f.Close()
	var rec dedupRecord
	held, size := readRecord(f)
	if len(held) > 0 {
		json.Unmarshal(held, &rec)
	}
	rec, err = rec.next(id, window, now, holder)
	if rec.Count == 0 {
		return "", 0, time.Time{}, err
	}
	if rec.First != id {
		of = rec.First
	}
	data, _ := json.Marshal(rec)
	if err := rewrite(f, size, data); err != nil {
		return "", 0, time.Time{}, fmt.Errorf("dedup record: %w", err)
	}
	return of, rec.Count, rec.Until, nil
}

// takeRate records one whole core against the node's per-minute allowance
// and reports whether it fits.
func takeRate(sp spool.Spool, perMinute int, now time.Time) (bool, error) {
	if perMinute <= 0 {
		return true, nil
	}
	f, err := sp.Rate()
	if err != nil {
		return true, fmt.Errorf("rate record: %w", err)
	}
	defer f.Close()
	var times []int64
	held, size := readRecord(f)
	if len(held) > 0 {
		json.Unmarshal(held, &times)
	}
	keep, ok := admit(times, perMinute, now)
	if !ok {
		return false, nil
	}
	data, _ := json.Marshal(keep)
	return true, rewrite(f, size, data)
}

// slotWait is how long a helper waits for a collection slot before it
// drains its core.
const slotWait = 10 * time.Second

// takeSlot takes one of n collection slots, waiting up to slotWait. The
// slot is held until the returned file is closed (or the helper exits).
func takeSlot(sp spool.Spool, n int) (*os.File, bool) {
	deadline := time.Now().Add(slotWait)
	for {
		for i := range n {
			if f, err := sp.Slot(i); err == nil {
				return f, true
			}
		}
		if time.Now().After(deadline) {
			return nil, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// drain reads the rest of a core that is not kept, at pipe speed: splice
// moves the kernel's pages to /dev/null without copying them through the
// helper. head is what was read of it already.
func (s *coreStream) drain(head []byte, in *stallReader) error {
	s.drainHead(head)
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err == nil {
		defer null.Close()
		for {
			n, err := unix.Splice(int(in.f.Fd()), nil, int(null.Fd()), nil, chunk, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if err == unix.EAGAIN {
				// Nothing yet: wait for the kernel instead of
				// spinning, and not for ever.
				if err := in.wait(); err != nil {
					return fmt.Errorf("drain the core: %w", err)
				}
				continue
			}
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				break // not spliceable: read below
			}
			if n == 0 {
				return nil
			}
			s.core.RawBytes += n
		}
	}
	buf := make([]byte, chunk)
	for {
		n, err := in.Read(buf)
		s.core.RawBytes += int64(n)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("drain the core: %w", err)
		}
	}
}

// drainHead counts what was read of a core that is not kept.
func (s *coreStream) drainHead(head []byte) {
	s.layout.feed(head)
	s.core.RawBytes += int64(len(head))
}

// readHead reads the first bytes of the core, as many as the crashing
// thread's registers need (the ELF header, the program headers and the
// first note), and returns them with the registers.
func readHead(in *stallReader) ([]byte, analysis.Regs, error) {
	var head []byte
	for {
		regs, need, err := analysis.HeadRegs(head)
		if err != analysis.ErrNeedMore {
			return head, regs, err
		}
		if need > maxHead {
			return head, regs, errors.New("the core's notes start too far in")
		}
		buf := make([]byte, max(need-len(head), 64<<10))
		n, err := in.Read(buf)
		head = append(head, buf[:n]...)
		if errors.Is(err, syscall.EAGAIN) {
			// A non-blocking pipe with nothing yet (os.File wraps the
			// errno: errors.Is): wait for it, within the bound.
			if err := in.wait(); err != nil {
				return head, regs, fmt.Errorf("read the core's head: %w", err)
			}
			continue
		}
		if err != nil && !errors.Is(err, syscall.EINTR) {
			return head, regs, fmt.Errorf("read the core's head: %w", err)
		}
	}
}
