package analysis

import (
	"bytes"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/corecatch/corecatch/test/hostile"
)

// TestHostileSymbols names an address in files whose symbol tables are
// crafted to exhaust a reader: the control is named, each hostile one
// leaves the frame unnamed with a warning, and no file costs the reader
// more than a few MiB, whatever it declares.
func TestHostileSymbols(t *testing.T) {
	const vaddr, mapped = 0x400000, 0x7f0000000000
	base := hostile.Minimal(vaddr, make([]byte, 0x2000))
	for _, tc := range []struct {
		name string
		kind hostile.Symbols
		fn   string
		warn string
	}{
		{"plain", hostile.Named, "target", ""},
		{"zlib", hostile.NamedZlib, "target", ""},
		{"long names", hostile.LongNames, "", "a name longer than 4096 bytes"},
		{"zstd bomb", hostile.ZstdBomb, "", "inflates to 536870912 bytes"},
		{"zlib bomb", hostile.ZlibBomb, "", "inflates to 1073741824 bytes"},
	} {
		file, err := hostile.WithSymbols(base, tc.kind)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		maps := []Mapping{{Start: mapped, End: mapped + 0x2000, Offset: 0x1000, Path: "/app/" + strings.ReplaceAll(tc.name, " ", "-")}}
		sym := NewSymbolizer(maps, func(Mapping) (io.ReaderAt, io.Closer, error) {
			return bytes.NewReader(file), io.NopCloser(nil), nil
		})
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		fr := sym.Frames([]Lookup{{Addr: mapped + 0x1234}, {Addr: mapped + 0x40, Ret: true}})
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
			t.Errorf("%s (%d bytes): symbolizing allocated %d bytes", tc.name, len(file), alloc)
		}
		if fr[0].Function != tc.fn && len(fr[0].Function) > 40 {
			fr[0].Function, fr[1].Function = fr[0].Function[:40]+"...", fr[1].Function[:40]+"..."
		}
		if fr[0].Function != tc.fn || fr[1].Function != tc.fn || fr[0].Module != maps[0].Path[5:] || fr[0].Offset != vaddr+0x1234 {
			t.Errorf("%s: frames %+v, want both in %q at %#x", tc.name, fr, tc.fn, vaddr+0x1234)
		}
		w := sym.Warnings()
		if tc.warn == "" && len(w) != 0 || tc.warn != "" && (len(w) != 1 || !strings.Contains(w[0], tc.warn) || !strings.Contains(w[0], maps[0].Path)) {
			t.Errorf("%s: warnings %q, want one saying %q", tc.name, w, tc.warn)
		}
		t.Logf("%s: %d bytes, %q", tc.name, len(file), w)
	}
}

// TestMutatedELF feeds the readers thousands of randomly corrupted files
// (bytes of the control files overwritten, a fixed seed): none may make
// them panic or allocate much, whatever it declares.
func TestMutatedELF(t *testing.T) {
	base := hostile.Minimal(0x400000, make([]byte, 0x100))
	seeds := [][]byte{base}
	for _, k := range []hostile.Symbols{hostile.Named, hostile.NamedZlib} {
		file, err := hostile.WithSymbols(base, k)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, file)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 5000 {
		file := bytes.Clone(seeds[r.IntN(len(seeds))])
		for range 1 + r.IntN(8) {
			file[r.IntN(len(file))] = byte(r.IntN(256))
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		BuildID(bytes.NewReader(file))
		if e, err := readELF(bytes.NewReader(file)); err == nil {
			e.lookupSymbols([]uint64{0x400000, 0x400010, 0x7fffffff})
			if gt := e.goTable(); gt != nil {
				gt.name(0x400010)
			}
		}
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
			t.Fatalf("mutant %d cost %d bytes", i, alloc)
		}
	}
}
