package collector

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

// syntheticCore returns a whole ELF core of about size bytes: headers, then
// incompressible segment data with a run of zeros, exactly as long as its
// program headers promise.
func syntheticCore(size uint64) []byte {
	segs, end := layoutOf(true, size/4, size/4, size/4+7, size/4-4096)
	core := make([]byte, end)
	r := rand.New(rand.NewPCG(7, 7))
	for i := range core {
		core[i] = byte(r.Uint32())
	}
	clear(core[segs[2].off : segs[2].off+segs[2].size/2])
	copy(core, elfCore{is64: true, bo: binary.LittleEndian, segs: segs}.header())
	return core
}

// oddReader returns at most n bytes per Read, and once an EINTR, as a pipe
// read interrupted by a signal does.
type oddReader struct {
	r      io.Reader
	n      int
	eintr  bool
	failAt int64 // after this many bytes, fail with a read error (0: never)
	read   int64
}

func (o *oddReader) Read(p []byte) (int, error) {
	if o.eintr {
		o.eintr = false
		return 0, syscall.EINTR
	}
	if o.failAt > 0 && o.read >= o.failAt {
		return 0, syscall.EIO
	}
	n, err := o.r.Read(p[:min(len(p), o.n)])
	o.read += int64(n)
	return n, err
}

// fullDisk accepts left bytes, then fails as a file on a full disk does.
type fullDisk struct {
	buf  bytes.Buffer
	left int
}

func (d *fullDisk) Write(p []byte) (int, error) {
	if len(p) > d.left {
		n, _ := d.buf.Write(p[:d.left])
		d.left = 0
		return n, &os.PathError{Op: "write", Path: "core.zst", Err: syscall.ENOSPC}
	}
	d.left -= len(p)
	return d.buf.Write(p)
}

func decompress(t *testing.T, data []byte) []byte {
	t.Helper()
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	out, err := dec.DecodeAll(data, nil)
	if err != nil {
		t.Fatalf("core.zst does not decompress: %v", err)
	}
	return out
}

func TestCoreStream(t *testing.T) {
	core := syntheticCore(12 << 20)
	n := int64(len(core))
	notELF := bytes.Repeat([]byte("not a core "), 100_000)
	const room = quotaMargin + 2<<20

	for _, tc := range []struct {
		name    string
		in      []byte
		piece   int // read size; 0: chunk
		limit   int64
		reason  string // limit reason
		room    int64  // -1: unbounded
		disk    int    // bytes the disk takes before ENOSPC; 0: unbounded
		noOut   bool
		failAt  int64
		kept    int64 // want KeptBytes; -1: some, fewer than the raw bytes
		trunc   string
		expect  int64
		wantErr bool // finish returns an error
		runErr  bool
	}{
		{name: "whole", in: core, limit: -1, room: -1, kept: n, expect: n},
		{name: "whole, odd reads", in: core, piece: 4093, limit: -1, room: -1, kept: n, expect: n},
		{name: "not ELF", in: notELF, limit: -1, room: -1, kept: int64(len(notELF))},
		{name: "limit in a chunk", in: core, limit: 3<<20 + 12_345, reason: bundle.ReasonMaxCoreBytes, room: -1,
			kept: 3<<20 + 12_345, trunc: bundle.ReasonMaxCoreBytes, expect: n},
		{name: "limit on a chunk boundary", in: core, limit: 2 * chunk, reason: bundle.ReasonMaxCoreBytes, room: -1,
			kept: 2 * chunk, trunc: bundle.ReasonMaxCoreBytes, expect: n},
		{name: "limit, odd reads", in: core, piece: 777, limit: 1_000_001, reason: bundle.ReasonRlimit, room: -1,
			kept: 1_000_001, trunc: bundle.ReasonRlimit, expect: n},
		{name: "limit zero keeps nothing", in: core, limit: 0, reason: bundle.ReasonRlimit, room: -1, noOut: true,
			kept: 0, trunc: bundle.ReasonRlimit, expect: n},
		{name: "limit beyond the core", in: core, limit: 2 * n, reason: bundle.ReasonMaxCoreBytes, room: -1, kept: n, expect: n},
		{name: "disk full", in: core, limit: -1, room: -1, disk: 3 << 20, kept: -1, trunc: bundle.ReasonDiskFull, expect: n, wantErr: true},
		{name: "quota", in: core, limit: -1, room: room, kept: -1, trunc: bundle.ReasonQuota, expect: n},
		{name: "no room at all", in: core, limit: -1, room: 0, kept: 0, trunc: bundle.ReasonQuota, expect: n},
		{name: "short", in: core[:n/2+3], limit: -1, room: -1, kept: n/2 + 3, trunc: bundle.ReasonShort, expect: n},
		{name: "short, odd reads", in: core[:n-1], piece: 65_537, limit: -1, room: -1, kept: n - 1, trunc: bundle.ReasonShort, expect: n},
		{name: "read error", in: core, limit: -1, room: -1, failAt: 3 << 20, kept: 3 << 20, trunc: bundle.ReasonShort, expect: n, runErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			piece := tc.piece
			if piece == 0 {
				piece = chunk
			}
			in := &oddReader{r: bytes.NewReader(tc.in), n: piece, eintr: true, failAt: tc.failAt}
			disk := &fullDisk{left: tc.disk}
			if tc.disk == 0 {
				disk.left = 1 << 62
			}
			var out io.Writer = disk
			if tc.noOut {
				out = nil
			}
			s := newCoreStream(tc.limit, tc.reason, zstd.SpeedFastest)
			if tc.room >= 0 {
				s.space = fixedRoom(tc.room)
			}
			err := s.run(in, out)
			if (err != nil) != tc.runErr {
				t.Fatalf("run = %v, want an error: %v", err, tc.runErr)
			}
			c, err := s.finish()
			if (err != nil) != tc.wantErr {
				t.Errorf("finish = %v, want an error: %v", err, tc.wantErr)
			}
			if c.RawBytes != in.read {
				t.Errorf("raw_bytes = %d, want every byte read (%d)", c.RawBytes, in.read)
			}
			if tc.kept >= 0 && c.KeptBytes != tc.kept || tc.kept < 0 && (c.KeptBytes <= 0 || c.KeptBytes >= c.RawBytes) {
				t.Errorf("kept_bytes = %d, want %d (-1: some)", c.KeptBytes, tc.kept)
			}
			if c.Truncated != (tc.trunc != "") || c.TruncateReason != tc.trunc {
				t.Errorf("truncated = %v (%q), want %q", c.Truncated, c.TruncateReason, tc.trunc)
			}
			if c.ExpectedBytes != tc.expect {
				t.Errorf("expected_bytes = %d, want %d", c.ExpectedBytes, tc.expect)
			}
			if c.StoredBytes != int64(disk.buf.Len()) {
				t.Errorf("stored_bytes = %d, but %d reached the store", c.StoredBytes, disk.buf.Len())
			}
			if tc.room >= quotaMargin && c.StoredBytes > tc.room {
				t.Errorf("stored %d bytes into a room of %d", c.StoredBytes, tc.room)
			}
			if tc.noOut {
				if c.Compression != "" || c.StoredBytes != 0 {
					t.Errorf("nothing kept, but compression %q, stored %d", c.Compression, c.StoredBytes)
				}
				return
			}
			if c.Compression != "zstd" {
				t.Errorf("compression = %q", c.Compression)
			}
			if tc.disk > 0 {
				return // a cut frame: nothing to compare
			}
			if got := decompress(t, disk.buf.Bytes()); !bytes.Equal(got, tc.in[:c.KeptBytes]) {
				t.Errorf("core.zst holds %d bytes that are not the first %d of the core", len(got), c.KeptBytes)
			}
		})
	}
}

func TestWriteReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{syscall.ENOSPC, bundle.ReasonDiskFull},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.EDQUOT}, bundle.ReasonDiskFull},
		{syscall.EIO, bundle.ReasonError},
		{errors.New("other"), bundle.ReasonError},
	} {
		if got := writeReason(tc.err); got != tc.want {
			t.Errorf("writeReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// fixedRoom is a store with a fixed room and nothing older to delete.
type fixedRoom int64

func (r fixedRoom) Room() int64                                { return int64(r) }
func (r fixedRoom) MaxRoom() int64                             { return int64(r) }
func (r fixedRoom) FreeOldest(context.Context) (string, error) { return "", nil }

// TestChargeMakesRoomAsRetention: a captured file takes the room
// retention leaves, then the oldest bundles' (the ones retention deletes
// first once the new bundle is published), and fails only when even that is
// not enough; the core counts what the files took.
func TestChargeMakesRoomAsRetention(t *testing.T) {
	ctx := context.Background()
	st := store.NewFile(t.TempDir())
	var ids []string
	for i := range 2 {
		id := bundle.NewID(time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC), []byte("old"))
		w, err := st.Put(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		f, _ := w.Create(bundle.CoreFile)
		f.Write(bytes.Repeat([]byte{1}, 1<<20))
		f.Close()
		if err := w.Commit(ctx, &bundle.Metadata{Schema: bundle.Schema, ID: id}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	u, _ := st.Usage(ctx)
	sp, err := st.Space(ctx, store.Retention{MaxUse: u.Bytes + 4<<20})
	if err != nil {
		t.Fatal(err)
	}
	s := newCoreStream(-1, bundle.ReasonMaxCoreBytes, zstd.SpeedFastest)
	s.space = sp
	s.encoding.Store(true) // a core is compressed meanwhile: its margin counts
	if !s.charge(2<<20) || len(s.freedIDs()) != 0 {
		t.Errorf("a 2 MiB file in 4 MiB of room: freed %v", s.freedIDs())
	}
	// 2 MiB more, with the margin, pass the room: the oldest bundle goes,
	// the newer one stays.
	if !s.charge(2<<20) || !slices.Equal(s.freedIDs(), ids[:1]) {
		t.Errorf("charge freed %v; want the oldest, %s", s.freedIDs(), ids[0])
	}
	if s.charge(1<<30) || !slices.Equal(s.freedIDs(), ids[:1]) {
		t.Errorf("1 GiB fitted in a store bounded at a few MiB, or deleted bundles in vain (freed %v)", s.freedIDs())
	}
	// The core counts the files: with 4 MiB of files charged, 4 MiB of
	// core cannot fit even with the newer bundle gone, so it stays.
	s.out.n.Store(4 << 20)
	if s.makeRoom(0) || len(s.freedIDs()) != 1 {
		t.Errorf("the core found room beside 4 MiB of files; freed %v", s.freedIDs())
	}
}
