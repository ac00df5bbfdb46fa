package collector

import (
	"encoding/binary"
)

// coreLayout learns, from the first bytes of a core stream, how long the
// whole core must be: the furthest end of any program header's file range
// (and of the extra section header cores with more than 65535 segments
// carry). The kernel stops a dump early when the crasher gets a fatal signal
// (an OOM kill, a kubelet SIGKILL), so a core shorter than this is truncated,
// however normal its end of stream looked.
type coreLayout struct {
	head     []byte
	done     bool
	expected int64 // 0 when the stream is not a readable ELF core
}

// maxHead bounds what coreLayout buffers: 65535 64-bit program headers and
// the ELF header need 3.6 MB.
const maxHead = 4 << 20

// feed gives coreLayout the next bytes of the stream; it keeps only what it
// still needs.
func (l *coreLayout) feed(p []byte) {
	// What is needed grows as the header is learnt (the ELF header says
	// where the program headers are and how many), so take bytes until the
	// need stops growing.
	for !l.done {
		need := l.need()
		if need > maxHead {
			l.done = true
			return
		}
		missing := need - len(l.head)
		if missing <= 0 {
			l.parse()
			return
		}
		if len(p) == 0 {
			return
		}
		k := min(missing, len(p))
		l.head, p = append(l.head, p[:k]...), p[k:]
	}
}

// ehdr is what coreLayout uses of an ELF header.
type ehdr struct {
	phoff, shoff                       uint64
	phentsize, phnum, shentsize, shnum uint16
}

// header decodes the ELF header, and reports false for anything that is
// not a core the layout can be trusted from: another magic, class, byte
// order or file type, or program headers smaller than the class defines.
func (l *coreLayout) header() (ehdr, bool) {
	h := l.head
	if len(h) < 64 || string(h[:4]) != "\x7fELF" || (h[4] != 1 && h[4] != 2) || (h[5] != 1 && h[5] != 2) {
		return ehdr{}, false
	}
	bo := l.order()
	var e ehdr
	minEnt := uint16(32)
	if h[4] == 2 {
		e = ehdr{phoff: bo.Uint64(h[32:]), shoff: bo.Uint64(h[40:]),
			phentsize: bo.Uint16(h[54:]), phnum: bo.Uint16(h[56:]), shentsize: bo.Uint16(h[58:]), shnum: bo.Uint16(h[60:])}
		minEnt = 56
	} else {
		e = ehdr{phoff: uint64(bo.Uint32(h[28:])), shoff: uint64(bo.Uint32(h[32:])),
			phentsize: bo.Uint16(h[42:]), phnum: bo.Uint16(h[44:]), shentsize: bo.Uint16(h[46:]), shnum: bo.Uint16(h[48:])}
	}
	if bo.Uint16(h[16:]) != 4 || e.phentsize < minEnt { // ET_CORE
		return ehdr{}, false
	}
	return e, true
}

// need returns how many leading bytes parse requires, given what is known.
func (l *coreLayout) need() int {
	if len(l.head) < 64 {
		return 64
	}
	e, ok := l.header()
	if !ok {
		return 64 // parse gives up
	}
	if e.phoff > maxHead {
		return maxHead + 1
	}
	if e.phnum == 0xffff { // PN_XNUM: the program headers run up to the first segment's data
		if len(l.head) < int(e.phoff)+int(e.phentsize) {
			return int(e.phoff) + int(e.phentsize)
		}
		first, _ := l.phdr(int(e.phoff))
		if first < e.phoff+uint64(e.phentsize) || first > maxHead {
			return maxHead + 1
		}
		return int(first)
	}
	return int(e.phoff) + int(e.phentsize)*int(e.phnum)
}

func (l *coreLayout) order() binary.ByteOrder {
	if l.head[5] == 2 {
		return binary.BigEndian
	}
	return binary.LittleEndian
}

// phdr reads the program header at off and returns its p_offset and the end
// of its file range.
func (l *coreLayout) phdr(off int) (uint64, uint64) {
	h, bo := l.head[off:], l.order()
	if l.head[4] == 2 {
		o := bo.Uint64(h[8:])
		return o, o + bo.Uint64(h[32:])
	}
	o := uint64(bo.Uint32(h[4:]))
	return o, o + uint64(bo.Uint32(h[16:]))
}

func (l *coreLayout) parse() {
	l.done = true
	e, ok := l.header()
	need := l.need()
	if !ok || need > len(l.head) {
		return
	}
	end := uint64(need)
	if e.shoff > 0 {
		end = max(end, e.shoff+uint64(e.shentsize)*uint64(e.shnum))
	}
	for off := int(e.phoff); off+int(e.phentsize) <= need; off += int(e.phentsize) {
		_, pend := l.phdr(off)
		end = max(end, pend)
	}
	if end < 1<<62 {
		l.expected = int64(end)
	}
	l.head = nil
}
