package bundle

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// CoreWriter compresses a core into CoreFile's format: zstd frames of
// CoreFrameBytes raw bytes each (the last one shorter), a 4 MiB window and
// a checksum per frame, then a seek table (zstd's seekable format: a
// skippable frame any zstd decoder passes over). A pull reads the table
// and fetches, decodes and resumes frames independently.
type CoreWriter struct {
	enc    *zstd.Encoder
	w      *countWriter
	raw    int64 // raw bytes written
	frames []SeekEntry
	start  int64 // compressed offset of the current frame
}

// SeekEntry is one frame of a compressed core, as its seek table lists it.
type SeekEntry struct {
	Compressed, Raw int64
}

// The seekable format's framing (zstd's contrib/seekable_format).
const (
	seekTableMagic = 0x184D2A5E // a skippable frame's magic
	seekableMagic  = 0x8F92EAB1
	// SeekFooterBytes is the footer's size, which ends the file.
	SeekFooterBytes = 9
)

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// NewCoreWriter starts a compressed core on w at level.
func NewCoreWriter(w io.Writer, level zstd.EncoderLevel) (*CoreWriter, error) {
	cw := &countWriter{w: w}
	enc, err := zstd.NewWriter(cw,
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(4<<20),
		zstd.WithEncoderCRC(true))
	if err != nil {
		return nil, err
	}
	return &CoreWriter{enc: enc, w: cw}, nil
}

// Write compresses p, ending a frame at each multiple of CoreFrameBytes.
func (c *CoreWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		k := min(len(p)-done, int(CoreFrameBytes-c.raw%CoreFrameBytes))
		n, err := c.enc.Write(p[done : done+k])
		done += n
		c.raw += int64(n)
		if err != nil {
			return done, err
		}
		if c.raw%CoreFrameBytes == 0 {
			if err := c.endFrame(); err != nil {
				return done, err
			}
			c.enc.Reset(c.w)
		}
	}
	return done, nil
}

// endFrame ends the current frame and lists it.
func (c *CoreWriter) endFrame() error {
	if err := c.enc.Close(); err != nil {
		return err
	}
	raw := c.raw - int64(len(c.frames))*CoreFrameBytes
	c.frames = append(c.frames, SeekEntry{Compressed: c.w.n - c.start, Raw: raw})
	c.start = c.w.n
	return nil
}

// Compressed returns how many bytes the compressed core took so far.
func (c *CoreWriter) Compressed() int64 { return c.w.n }

// Close ends the last frame (unless a multiple of CoreFrameBytes just
// ended it) and writes the seek table.
func (c *CoreWriter) Close() error {
	if c.raw == 0 || c.raw%CoreFrameBytes != 0 {
		if err := c.endFrame(); err != nil {
			return err
		}
	}
	table := make([]byte, 8, 8+8*len(c.frames)+SeekFooterBytes)
	binary.LittleEndian.PutUint32(table, seekTableMagic)
	for _, f := range c.frames {
		table = binary.LittleEndian.AppendUint32(table, uint32(f.Compressed))
		table = binary.LittleEndian.AppendUint32(table, uint32(f.Raw))
	}
	table = binary.LittleEndian.AppendUint32(table, uint32(len(c.frames)))
	table = append(table, 0) // no per-frame checksums: each frame has its own
	table = binary.LittleEndian.AppendUint32(table, seekableMagic)
	binary.LittleEndian.PutUint32(table[4:], uint32(len(table)-8))
	_, err := c.w.Write(table)
	return err
}

// ErrNoSeekTable is what ParseSeekTable returns for a core.zst without
// one (written before corecatch wrote them): it is read as one stream.
var ErrNoSeekTable = errors.New("no seek table")

// SeekTableSize reads a compressed core's last SeekFooterBytes and returns
// the size of its seek table, footer included, to read next.
func SeekTableSize(footer []byte) (int64, error) {
	if len(footer) != SeekFooterBytes || binary.LittleEndian.Uint32(footer[5:]) != seekableMagic {
		return 0, ErrNoSeekTable
	}
	if footer[4]&0x80 != 0 {
		return 0, errors.New("seek table with checksums: not written by corecatch")
	}
	return 8 + 8*int64(binary.LittleEndian.Uint32(footer)) + SeekFooterBytes, nil
}

// ParseSeekTable reads a seek table (as SeekTableSize measured it) that
// ends a compressed core of size bytes, and checks it covers the file.
func ParseSeekTable(table []byte, size int64) ([]SeekEntry, error) {
	if len(table) < 8+SeekFooterBytes || binary.LittleEndian.Uint32(table) != seekTableMagic ||
		int(binary.LittleEndian.Uint32(table[4:])) != len(table)-8 {
		return nil, errors.New("damaged seek table")
	}
	n := (len(table) - 8 - SeekFooterBytes) / 8
	frames := make([]SeekEntry, n)
	var sum int64
	for i := range frames {
		e := table[8+8*i:]
		frames[i] = SeekEntry{Compressed: int64(binary.LittleEndian.Uint32(e)), Raw: int64(binary.LittleEndian.Uint32(e[4:]))}
		sum += frames[i].Compressed
		if frames[i].Raw > CoreFrameBytes {
			return nil, fmt.Errorf("seek table: frame %d holds %d bytes, more than %d", i, frames[i].Raw, CoreFrameBytes)
		}
	}
	if sum+int64(len(table)) != size {
		return nil, fmt.Errorf("seek table: frames of %d bytes and a table of %d in a file of %d", sum, len(table), size)
	}
	return frames, nil
}
