// Package coregen makes large synthetic cores and bundles for the pull tests
// and bench: what a real crash would take minutes and gigabytes of memory
// to produce.
package coregen

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

// coreBlock is the unit of SyntheticCore: one in three is zeros.
const coreBlock = 1 << 20

// SyntheticCore returns size bytes that look to a pull like a large core:
// incompressible 1 MiB blocks, every third one zeros (untouched memory,
// which a pull writes as holes). The same seed gives the same bytes, so a
// test compares a pulled core with a second reader instead of keeping one.
func SyntheticCore(size int64, seed uint64) io.Reader {
	return &syntheticCore{left: size, seed: seed, cur: -1}
}

type syntheticCore struct {
	left, off int64
	seed      uint64
	block     []byte
	cur       int64 // the block in block
}

func (c *syntheticCore) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, io.EOF
	}
	if c.block == nil {
		c.block = make([]byte, coreBlock)
	}
	b := c.off / coreBlock
	in := c.off % coreBlock
	switch {
	case b == c.cur:
	case b%3 == 2:
		clear(c.block)
	default:
		var key [32]byte
		key[0], key[1], key[2], key[3] = byte(b), byte(b>>8), byte(b>>16), byte(c.seed)
		rand.NewChaCha8(key).Read(c.block)
	}
	c.cur = b
	n := copy(p, c.block[in:min(int64(coreBlock), in+c.left)])
	c.off += int64(n)
	c.left -= int64(n)
	return n, nil
}

// PutCoreBundle publishes in st a bundle whose core.zst is core compressed
// as the helper compresses it, and returns its metadata.
func PutCoreBundle(ctx context.Context, st store.Store, core io.Reader) (*bundle.Metadata, error) {
	now := time.Now().UTC()
	id := bundle.NewID(now, []byte(fmt.Sprint(now.UnixNano())))
	w, err := st.Put(ctx, id)
	if err != nil {
		return nil, err
	}
	defer w.Abort()
	f, err := w.Create(bundle.CoreFile)
	if err != nil {
		return nil, err
	}
	enc, err := bundle.NewCoreWriter(f, zstd.SpeedFastest)
	if err != nil {
		return nil, err
	}
	raw, err := io.Copy(enc, core)
	if err == nil {
		err = enc.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write core.zst: %w", err)
	}
	m := &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: now.Truncate(time.Second), Comm: "synthetic",
		Core: bundle.Core{Compression: "zstd", RawBytes: raw, KeptBytes: raw, StoredBytes: enc.Compressed()}}
	if err := w.Commit(ctx, m); err != nil {
		return nil, err
	}
	return m, nil
}
