package analysis

import (
	"debug/elf"
	"encoding/binary"
	"io"
)

// pcTable names the functions of a Go binary from the runtime's own pc
// table, which survives stripping and is exact where ELF symbols of an
// externally linked (cgo) binary are not. debug/gosym needs the whole
// table in memory and builds every function's record (tens of MiB for a
// large binary); this reads it in place: a binary search over the function
// table, then one name, a few small reads per address.
type pcTable struct {
	r       *io.SectionReader
	bo      binary.ByteOrder
	ptrsize int64
	// field is the size of a function-table entry: 4 since Go 1.18 (an
	// offset from textStart), the pointer size before.
	field     int64
	nfunc     int64
	textStart uint64
	// functab, funcdata and funcnames are offsets in the table.
	functab, funcdata, funcnames int64
}

// The pc table's magic numbers, by Go version (see runtime/symtab.go).
const (
	pclnGo12  = 0xfffffffb
	pclnGo116 = 0xfffffffa
	pclnGo118 = 0xfffffff0
	pclnGo120 = 0xfffffff1
)

// goTable reads the header of a Go binary's pc table, nil for other
// binaries or a table it cannot trust.
func (f *elfFile) goTable() *pcTable {
	if f.pclntab == nil || f.text == nil || f.pclntab.flags&elf.SHF_COMPRESSED != 0 || int64(f.pclntab.size) < 16 {
		return nil
	}
	t := &pcTable{r: io.NewSectionReader(f.r, int64(f.pclntab.off), int64(f.pclntab.size)), textStart: f.text.addr}
	var h [8]byte
	if _, err := t.r.ReadAt(h[:], 0); err != nil || h[4] != 0 || h[5] != 0 || (h[7] != 4 && h[7] != 8) {
		return nil
	}
	t.ptrsize, t.field = int64(h[7]), int64(h[7])
	var magic uint32
	for _, bo := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
		if m := bo.Uint32(h[:]); m == pclnGo12 || m == pclnGo116 || m == pclnGo118 || m == pclnGo120 {
			t.bo, magic = bo, m
		}
	}
	word := func(i int64) int64 { return int64(t.uint(8+i*t.ptrsize, t.ptrsize)) }
	switch magic {
	case pclnGo118, pclnGo120:
		t.field = 4
		t.nfunc, t.funcnames, t.funcdata = word(0), word(3), word(7)
		t.functab = t.funcdata
	case pclnGo116:
		t.nfunc, t.funcnames, t.funcdata = word(0), word(2), word(6)
		t.functab = t.funcdata
	case pclnGo12:
		t.nfunc, t.functab = word(0), 8+t.ptrsize
	default:
		return nil
	}
	size := int64(f.pclntab.size)
	if t.nfunc <= 0 || t.nfunc > size || t.functab < 0 || t.functab+(2*t.nfunc+1)*t.field > size ||
		t.funcdata < 0 || t.funcdata > size || t.funcnames < 0 || t.funcnames > size {
		return nil
	}
	return t
}

// uint reads an n-byte unsigned integer at off, 0 when it is outside.
func (t *pcTable) uint(off, n int64) uint64 {
	var b [8]byte
	if _, err := t.r.ReadAt(b[:n], off); err != nil {
		return 0
	}
	if n == 4 {
		return uint64(t.bo.Uint32(b[:]))
	}
	return t.bo.Uint64(b[:])
}

// pc returns the entry of function i (i == nfunc: the table's end).
func (t *pcTable) pc(i int64) uint64 {
	v := t.uint(t.functab+2*i*t.field, t.field)
	if t.field == 4 {
		v += t.textStart
	}
	return v
}

// name returns the name of the function covering pc, "" when none does.
func (t *pcTable) name(pc uint64) string {
	if pc < t.pc(0) || pc >= t.pc(t.nfunc) {
		return ""
	}
	lo, hi := int64(0), t.nfunc // pc(lo) <= pc < pc(hi)
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if t.pc(mid) <= pc {
			lo = mid
		} else {
			hi = mid
		}
	}
	// The function's record: its entry (a pointer, or a 4-byte offset
	// since Go 1.18), then the offset of its name.
	fn := t.funcdata + int64(t.uint(t.functab+(2*lo+1)*t.field, t.field))
	nameOff := int64(uint32(t.uint(fn+t.field, 4)))
	buf := make([]byte, maxNameBytes)
	n, _ := t.r.ReadAt(buf, t.funcnames+nameOff)
	name, _ := cString(buf[:n])
	return name
}
