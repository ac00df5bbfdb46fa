package store

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// testCore is size bytes of random data with zero runs, as a core has.
func testCore(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, size)
	for i := 0; i < size; i += 1 << 16 {
		if r.IntN(3) != 0 {
			for j := i; j < min(size, i+1<<16); j++ {
				b[j] = byte(r.Uint32())
			}
		}
	}
	return b
}

// putCore publishes a bundle whose core.zst is zst.
func putCore(t *testing.T, s Store, id string, zst []byte) {
	t.Helper()
	w, err := s.Put(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	f, err := w.Create(bundle.CoreFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(zst); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	m := &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: time.Now().UTC().Truncate(time.Second), Comm: "t",
		Core: bundle.Core{Compression: "zstd", StoredBytes: int64(len(zst))}}
	if err := w.Commit(ctx, m); err != nil {
		t.Fatal(err)
	}
}

func checkPulled(t *testing.T, dir string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(dir, "core"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("pulled core: %d bytes, %v; want the %d bytes put", len(got), err, len(want))
	}
	if _, err := os.Stat(filepath.Join(dir, ".core"+PartSuffix+".log")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the part's log is left: %v", err)
	}
}

// TestPullWithoutSeekTable pulls a core.zst of one frame and no seek
// table, as bundles were written before: its bytes come in order from
// parallel ranged reads of small chunks and decode into the same core.
func TestPullWithoutSeekTable(t *testing.T) {
	s, _ := newS3(t, "pull")
	raw := testCore(1, 9<<20+12345)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
	zst := enc.EncodeAll(raw, nil)
	id := bundle.NewID(time.Now(), []byte("old"))
	putCore(t, s, id, zst)
	dir := t.TempDir()
	if _, err := PullWith(ctx, s, id, dir, PullOptions{Workers: 3, ChunkBytes: 256 << 10}); err != nil {
		t.Fatal(err)
	}
	checkPulled(t, dir, raw)
}

// cancelAfter cancels a pull once it has read n bytes.
type cancelAfter struct {
	n, got atomic.Int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Start(total, done int64) {}
func (c *cancelAfter) Add(n int64) {
	if c.got.Add(n) >= c.n.Load() {
		c.cancel()
	}
}

// TestPullContinuesSameVersionOnly interrupts a pull of a core of several
// frames, then pulls again: the same core.zst continues (and arrives
// whole), a rewritten one starts over.
func TestPullContinuesSameVersionOnly(t *testing.T) {
	s, _ := newS3(t, "pull")
	raw := testCore(2, 3*bundle.CoreFrameBytes+777)
	var zst bytes.Buffer
	w, _ := bundle.NewCoreWriter(&zst, zstd.SpeedFastest)
	w.Write(raw)
	w.Close()
	id := bundle.NewID(time.Now(), []byte("new"))
	putCore(t, s, id, zst.Bytes())
	dir := t.TempDir()
	interrupt := func() string {
		cctx, cancel := context.WithCancel(ctx)
		p := &cancelAfter{cancel: cancel}
		p.n.Store(int64(zst.Len()) / 2) // inside the second of three frames
		_, err := PullWith(cctx, s, id, dir, PullOptions{Workers: 1, Progress: p})
		if err == nil || !strings.Contains(err.Error(), "run the same pull again") {
			t.Fatalf("interrupted pull: %v", err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, ".core"+PartSuffix+".log"))
		return string(b)
	}
	if log := interrupt(); !strings.HasSuffix(log, "\nframe 0\n") {
		t.Fatalf("after the interruption the part's log is %q, want frame 0 done", log)
	}
	var started atomic.Int64
	if _, err := PullWith(ctx, s, id, dir, PullOptions{Progress: startAt{&started}}); err != nil {
		t.Fatal(err)
	}
	if started.Load() == 0 {
		t.Error("the second pull started from nothing")
	}
	checkPulled(t, dir, raw)

	// Interrupted again, then the object changes: the next pull starts
	// over and gets the new core.
	os.Remove(filepath.Join(dir, "core"))
	interrupt()
	raw2 := testCore(3, 2*bundle.CoreFrameBytes+5)
	zst.Reset()
	w, _ = bundle.NewCoreWriter(&zst, zstd.SpeedFastest)
	w.Write(raw2)
	w.Close()
	putCore(t, s, id, zst.Bytes())
	started.Store(-1)
	if _, err := PullWith(ctx, s, id, dir, PullOptions{Progress: startAt{&started}}); err != nil {
		t.Fatal(err)
	}
	if started.Load() != 0 {
		t.Errorf("a pull of a rewritten core.zst continued from %d", started.Load())
	}
	checkPulled(t, dir, raw2)
}

// startAt records where a pull started.
type startAt struct{ done *atomic.Int64 }

func (s startAt) Start(total, done int64) { s.done.Store(done) }
func (s startAt) Add(int64)               {}

// TestReplayDropsCutLine: a log cut by a kill inside its last line keeps
// every line before; a log of another version is not used.
func TestReplayDropsCutLine(t *testing.T) {
	v := coreVersion{ID: "x", ETag: "e", Size: 100}
	head := `{"id":"x","etag":"e","size":100}` + "\n"
	for _, tc := range []struct {
		log    string
		frames string
		ok     bool
	}{
		{head, "000", true},
		{head + "frame 1\nframe 0\n", "110", true},
		{head + "frame 1\nfra", "010", true},
		{head + "frame 7\nframe 2\n", "001", true},
		{`{"id":"x","etag":"other","size":100}` + "\nframe 1\n", "", false},
		{`{"id":"x","et`, "", false},
		{"", "", false},
	} {
		st, ok := replay([]byte(tc.log), v, 3)
		if ok != tc.ok || (ok && st.Frames != tc.frames) {
			t.Errorf("replay(%q) = %+v, %v; want frames %q, %v", tc.log, st, ok, tc.frames, tc.ok)
		}
	}
	if st, ok := replay([]byte(head+"upto 40 90\nupto 60 130\nupto 9"), v, 0); !ok || st.Comp != 60 || st.Raw != 130 {
		t.Errorf("replay of a stream's log = %+v, %v", st, ok)
	}
}
