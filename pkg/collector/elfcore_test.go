package collector

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

// seg is one program header's file range.
type seg struct{ off, size uint64 }

// elfCore describes a synthetic core's ELF header.
type elfCore struct {
	is64  bool
	bo    binary.ByteOrder
	etype uint16 // 4 (ET_CORE) unless set
	segs  []seg  // the first is the PT_NOTE, the others PT_LOAD
	xnum  bool   // e_phnum = PN_XNUM, the count in section header 0
	shoff uint64 // a section header there (xnum or not)
}

// header returns the ELF header followed by the program headers, as the
// kernel writes them at the start of a core.
func (c elfCore) header() []byte {
	ehsize, phentsize, shentsize := 52, 32, 40
	if c.is64 {
		ehsize, phentsize, shentsize = 64, 56, 64
	}
	etype := c.etype
	if etype == 0 {
		etype = 4
	}
	h := make([]byte, ehsize+phentsize*len(c.segs))
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 1, 1, 1
	if c.is64 {
		h[4] = 2
	}
	if c.bo == binary.BigEndian {
		h[5] = 2
	}
	bo := c.bo
	bo.PutUint16(h[16:], etype)
	bo.PutUint32(h[20:], 1)
	phnum, shnum := uint16(len(c.segs)), uint16(0)
	if c.xnum {
		phnum = 0xffff
	}
	if c.shoff > 0 {
		shnum = 1
	}
	if c.is64 {
		bo.PutUint16(h[18:], 62) // EM_X86_64
		bo.PutUint64(h[32:], uint64(ehsize))
		bo.PutUint64(h[40:], c.shoff)
		bo.PutUint16(h[52:], uint16(ehsize))
		bo.PutUint16(h[54:], uint16(phentsize))
		bo.PutUint16(h[56:], phnum)
		bo.PutUint16(h[58:], uint16(shentsize))
		bo.PutUint16(h[60:], shnum)
	} else {
		bo.PutUint16(h[18:], 3) // EM_386
		bo.PutUint32(h[28:], uint32(ehsize))
		bo.PutUint32(h[32:], uint32(c.shoff))
		bo.PutUint16(h[40:], uint16(ehsize))
		bo.PutUint16(h[42:], uint16(phentsize))
		bo.PutUint16(h[44:], phnum)
		bo.PutUint16(h[46:], uint16(shentsize))
		bo.PutUint16(h[48:], shnum)
	}
	for i, s := range c.segs {
		p := h[ehsize+i*phentsize:]
		typ := uint32(1) // PT_LOAD
		if i == 0 {
			typ = 4 // PT_NOTE
		}
		bo.PutUint32(p, typ)
		if c.is64 {
			bo.PutUint64(p[8:], s.off)
			bo.PutUint64(p[16:], 0x400000+uint64(i)<<20) // p_vaddr
			bo.PutUint64(p[32:], s.size)
			bo.PutUint64(p[40:], s.size+4096) // p_memsz
			bo.PutUint64(p[48:], 4096)
		} else {
			bo.PutUint32(p[4:], uint32(s.off))
			bo.PutUint32(p[8:], 0x8048000+uint32(i)<<20)
			bo.PutUint32(p[16:], uint32(s.size))
			bo.PutUint32(p[20:], uint32(s.size+4096))
			bo.PutUint32(p[28:], 4096)
		}
	}
	return h
}

// layoutOf builds segs: a note right after n program headers, then n-1
// loads of the given sizes at page-aligned offsets. It returns them and the
// end of the last.
func layoutOf(is64 bool, sizes ...uint64) ([]seg, uint64) {
	ehsize, phentsize := uint64(52), uint64(32)
	if is64 {
		ehsize, phentsize = 64, 56
	}
	off := ehsize + phentsize*uint64(len(sizes)+1)
	segs := []seg{{off, 1000}}
	off = (off + 1000 + 4095) &^ 4095
	for _, size := range sizes {
		segs = append(segs, seg{off, size})
		off = (off + size + 4095) &^ 4095
	}
	last := segs[len(segs)-1]
	return segs, last.off + last.size
}

// expectedSize feeds a coreLayout the stream in pieces of size n (the last
// one shorter) and returns what it expects. The stream may be anything, so
// a panic or an endless loop fails the test instead of hanging it.
func expectedSize(t *testing.T, stream []byte, n int) int64 {
	t.Helper()
	done := make(chan any, 1)
	var l coreLayout
	go func() {
		defer func() { done <- recover() }()
		for p := stream; len(p) > 0; {
			k := min(n, len(p))
			l.feed(p[:k])
			p = p[k:]
		}
	}()
	select {
	case r := <-done:
		if r != nil {
			t.Fatalf("coreLayout panicked: %v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("coreLayout did not return: an endless loop")
	}
	return l.expected
}

func TestCoreLayout(t *testing.T) {
	le := binary.LittleEndian
	segs64, end64 := layoutOf(true, 8192, 5000, 1<<20, 0)
	segs32, end32 := layoutOf(false, 4096, 12_345)
	// An earlier segment that ends after the later ones.
	wide := append([]seg(nil), segs64...)
	wide[1].size = end64 + 100_000 - wide[1].off
	// PN_XNUM: 70000 headers; the first (the note) starts where they end.
	const many = 70_000
	xsegs := make([]seg, many)
	for i := range xsegs {
		xsegs[i] = seg{64 + 56*many + uint64(i)*4096, 4096}
	}
	xend := xsegs[many-1].off + 4096

	for _, tc := range []struct {
		name string
		core elfCore
		want uint64
	}{
		{"64-bit", elfCore{is64: true, bo: le, segs: segs64}, end64},
		{"64-bit, widest segment first", elfCore{is64: true, bo: le, segs: wide}, end64 + 100_000},
		{"32-bit", elfCore{bo: le, segs: segs32}, end32},
		{"64-bit big endian", elfCore{is64: true, bo: binary.BigEndian, segs: segs64}, end64},
		{"section header past the data", elfCore{is64: true, bo: le, segs: segs64, shoff: end64 + 4096}, end64 + 4096 + 64},
		{"32-bit section header", elfCore{bo: le, segs: segs32, shoff: end32 + 1}, end32 + 1 + 40},
		{"PN_XNUM, few segments", elfCore{is64: true, bo: le, segs: segs64, xnum: true, shoff: end64}, end64 + 64},
		{"PN_XNUM, 70000 segments", elfCore{is64: true, bo: le, segs: xsegs, xnum: true, shoff: xend}, xend + 64},
		{"PN_XNUM 32-bit", elfCore{bo: le, segs: segs32, xnum: true, shoff: end32}, end32 + 40},
		{"not a core (ET_EXEC)", elfCore{is64: true, bo: le, etype: 2, segs: segs64}, 0},
	} {
		head := tc.core.header()
		// The stream goes on past the headers, as a real core does.
		stream := append(head, make([]byte, 10_000)...)
		for _, piece := range []int{1, 7, 63, 64, 65, 4093, chunk, len(stream)} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, piece), func(t *testing.T) {
				if got := expectedSize(t, stream, piece); uint64(got) != tc.want {
					t.Errorf("expected = %d, want %d", got, tc.want)
				}
			})
		}
	}
}

func TestCoreLayoutNotACore(t *testing.T) {
	segs, _ := layoutOf(true, 4096)
	head := elfCore{is64: true, bo: binary.LittleEndian, segs: segs}.header()
	patched := func(off int, b ...byte) []byte {
		h := append([]byte(nil), head...)
		copy(h[off:], b)
		return h
	}
	for _, tc := range []struct {
		name   string
		stream []byte
	}{
		{"empty", nil},
		{"text", []byte("this is not an ELF file, but it is long enough to hold an ELF header")},
		{"shorter than an ELF header", head[:40]},
		{"ends inside the program headers", head[:len(head)-1]},
		{"bad class", patched(4, 3)},
		{"bad byte order", patched(5, 0)},
		{"program header entries too small", patched(54, 8)},
		{"zeros", make([]byte, 1<<20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, piece := range []int{1, 13, chunk} {
				if got := expectedSize(t, tc.stream, piece); got != 0 {
					t.Errorf("in pieces of %d: expected = %d, want 0", piece, got)
				}
			}
		})
	}
}
