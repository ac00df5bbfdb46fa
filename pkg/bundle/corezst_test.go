package bundle

import (
	"bytes"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestCoreWriterFrames: a core of several frames reads back whole through
// any zstd decoder, and its seek table lists each frame where it is.
func TestCoreWriterFrames(t *testing.T) {
	for _, size := range []int{0, 1000, CoreFrameBytes, 2*CoreFrameBytes + 12345} {
		raw := withZeroRuns(uint64(size), size)
		var out bytes.Buffer
		w, err := NewCoreWriter(&out, zstd.SpeedFastest)
		if err != nil {
			t.Fatal(err)
		}
		for p := raw; len(p) > 0; p = p[min(len(p), 1<<20):] {
			if _, err := w.Write(p[:min(len(p), 1<<20)]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		dec, _ := zstd.NewReader(bytes.NewReader(out.Bytes()))
		got, err := io.ReadAll(dec)
		dec.Close()
		if err != nil || !bytes.Equal(got, raw) {
			t.Fatalf("size %d: decoded %d bytes, %v", size, len(got), err)
		}
		file := out.Bytes()
		n, err := SeekTableSize(file[len(file)-SeekFooterBytes:])
		if err != nil {
			t.Fatal(err)
		}
		frames, err := ParseSeekTable(file[int64(len(file))-n:], int64(len(file)))
		if err != nil {
			t.Fatal(err)
		}
		var off, rawOff int64
		for i, f := range frames {
			one, err := zstd.NewReader(bytes.NewReader(file[off : off+f.Compressed]))
			if err != nil {
				t.Fatal(err)
			}
			part, err := io.ReadAll(one)
			one.Close()
			if err != nil || !bytes.Equal(part, raw[rawOff:rawOff+f.Raw]) {
				t.Fatalf("size %d, frame %d: %d bytes, %v", size, i, len(part), err)
			}
			off, rawOff = off+f.Compressed, rawOff+f.Raw
		}
		if rawOff != int64(size) || (size > 0 && len(frames) != (size+CoreFrameBytes-1)/CoreFrameBytes) {
			t.Errorf("size %d: %d frames of %d bytes in all", size, len(frames), rawOff)
		}
	}
	if _, err := SeekTableSize(make([]byte, SeekFooterBytes)); err != ErrNoSeekTable {
		t.Errorf("a core.zst without a table: %v", err)
	}
}
