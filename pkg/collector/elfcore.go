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
	if l.done {
		return
	}
	need := l.need()
	if need > maxHead {
		l.done = true
		return
	}
	if missing := need - len(l.head); missing > 0 {
		l.head = append(l.head, p[:min(missing, len(p))]...)
	}
	if len(l.head) >= need {
		l.parse()
	}
}

// need returns how many leading bytes parse requires, given what is known.
func (l *coreLayout) need() int {
	h := l.head
	if len(h) < 64 {
		return 64
	}
	if string(h[:4]) != "\x7fELF" || (h[4] != 1 && h[4] != 2) || (h[5] != 1 && h[5] != 2) {
		return 64 // parse will give up
	}
	bo, is64 := l.order(), h[4] == 2
	var phoff uint64
	var phentsize, phnum uint16
	if is64 {
		phoff, phentsize, phnum = bo.Uint64(h[32:]), bo.Uint16(h[54:]), bo.Uint16(h[56:])
	} else {
		phoff, phentsize, phnum = uint64(bo.Uint32(h[28:])), bo.Uint16(h[42:]), bo.Uint16(h[44:])
	}
	if phoff > maxHead || phentsize == 0 {
		return maxHead + 1
	}
	if phnum == 0xffff { // PN_XNUM: the program headers run up to the first segment's data
		if len(h) < int(phoff)+int(phentsize) {
			return int(phoff) + int(phentsize)
		}
		first, _ := l.phdr(int(phoff))
		if first < phoff || first > maxHead {
			return maxHead + 1
		}
		return int(first)
	}
	return int(phoff) + int(phentsize)*int(phnum)
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
	h := l.head
	need := l.need()
	if need > len(h) || len(h) < 64 || string(h[:4]) != "\x7fELF" {
		return
	}
	bo, is64 := l.order(), h[4] == 2
	if bo.Uint16(h[16:]) != 4 { // ET_CORE
		return
	}
	var phoff, shoff uint64
	var phentsize, shentsize, shnum uint16
	if is64 {
		phoff, shoff = bo.Uint64(h[32:]), bo.Uint64(h[40:])
		phentsize, shentsize, shnum = bo.Uint16(h[54:]), bo.Uint16(h[58:]), bo.Uint16(h[60:])
	} else {
		phoff, shoff = uint64(bo.Uint32(h[28:])), uint64(bo.Uint32(h[32:]))
		phentsize, shentsize, shnum = bo.Uint16(h[42:]), bo.Uint16(h[46:]), bo.Uint16(h[48:])
	}
	end := uint64(need)
	if shoff > 0 {
		end = max(end, shoff+uint64(shentsize)*uint64(shnum))
	}
	for off := int(phoff); off+int(phentsize) <= need; off += int(phentsize) {
		_, e := l.phdr(off)
		end = max(end, e)
	}
	if end < 1<<62 {
		l.expected = int64(end)
	}
	l.head = nil
}
