// Package hostile builds the hostile inputs the security tests feed
// corecatch: files a crashed container controls, crafted to cost whoever
// reads them memory or time.
package hostile

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
)

// Symbols is the kind of symbol table WithSymbols gives a file.
type Symbols int

const (
	// Named is a plain table with one function, "target", covering .text:
	// the control, which every reader must name.
	Named Symbols = iota
	// NamedZlib is the same table compressed with zlib (SHF_COMPRESSED).
	NamedZlib
	// LongNames is about 1 MiB: 20,000 functions over .text that all share
	// one 512 KiB name without an end.
	LongNames
	// ZstdBomb is 16 KiB: a zstd-compressed table of RLE blocks that
	// inflates to 512 MiB of zero symbols, 22 million of them (debug/elf
	// allocates 2.6 GiB for it).
	ZstdBomb
	// ZlibBomb is 1 MiB: a zlib-compressed table that inflates to 1 GiB.
	ZlibBomb
)

// ZstdBombBytes and ZlibBombBytes are what the bombs inflate to.
const (
	ZstdBombBytes = 512 << 20
	ZlibBombBytes = 1 << 30
)

// Minimal returns the smallest ELF64 executable the analysis reads: one
// PT_LOAD segment of text bytes at vaddr (file offset 0x1000), a .text
// section and a section-name table.
func Minimal(vaddr uint64, text []byte) []byte {
	bo := binary.LittleEndian
	out := make([]byte, 0x1000, 0x1000+len(text))
	copy(out, elf.ELFMAG)
	out[elf.EI_CLASS], out[elf.EI_DATA], out[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	bo.PutUint16(out[16:], uint16(elf.ET_EXEC))
	bo.PutUint16(out[18:], uint16(elf.EM_X86_64))
	bo.PutUint32(out[20:], uint32(elf.EV_CURRENT))
	bo.PutUint64(out[24:], vaddr)
	bo.PutUint64(out[32:], 64) // phoff
	bo.PutUint16(out[52:], 64)
	bo.PutUint16(out[54:], 56)
	bo.PutUint16(out[56:], 1)
	bo.PutUint16(out[58:], 64)
	ph := out[64:]
	bo.PutUint32(ph, uint32(elf.PT_LOAD))
	bo.PutUint32(ph[4:], uint32(elf.PF_R|elf.PF_X))
	bo.PutUint64(ph[8:], 0x1000)
	bo.PutUint64(ph[16:], vaddr)
	bo.PutUint64(ph[24:], vaddr)
	bo.PutUint64(ph[32:], uint64(len(text)))
	bo.PutUint64(ph[40:], uint64(len(text)))
	bo.PutUint64(ph[48:], 0x1000)
	out = append(out, text...)
	out, err := appendSections(out, []section{{name: ".text", typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC | elf.SHF_EXECINSTR,
		addr: vaddr, off: 0x1000, size: uint64(len(text))}}, nil)
	if err != nil {
		panic(err) // a file of our own
	}
	return out
}

// WithSymbols returns an ELF64 little-endian file (an executable built by
// the test, or Minimal's) with its symbol table replaced by one of kind,
// appended after its contents with a new section header table: the
// segments, and so the program, are unchanged.
func WithSymbols(file []byte, kind Symbols) ([]byte, error) {
	f, err := elf.NewFile(bytes.NewReader(file))
	if err != nil {
		return nil, err
	}
	if f.Class != elf.ELFCLASS64 || f.ByteOrder != binary.LittleEndian {
		return nil, errors.New("WithSymbols takes ELF64 little-endian files")
	}
	text := f.Section(".text")
	if text == nil {
		return nil, errors.New("no .text section")
	}
	symtab, strtab, flags, err := table(kind, text.Addr, text.Size)
	if err != nil {
		return nil, err
	}
	var keep []section
	for _, s := range f.Sections[1:] {
		if s.Type == elf.SHT_SYMTAB {
			// Its string table stays, unused.
			s.Type = elf.SHT_PROGBITS
		}
		keep = append(keep, section{name: s.Name, typ: s.Type, flags: s.Flags, addr: s.Addr, off: s.Offset,
			size: s.FileSize, link: s.Link, info: s.Info, align: s.Addralign, entsize: s.Entsize})
	}
	return appendSections(file, keep, []section{
		{name: ".symtab", typ: elf.SHT_SYMTAB, flags: flags, data: symtab, link: uint32(len(keep) + 2), entsize: elf.Sym64Size, align: 8},
		{name: ".strtab", typ: elf.SHT_STRTAB, data: strtab, align: 1},
	})
}

// table builds a symbol table of kind over text, with its string table.
func table(kind Symbols, addr, size uint64) (symtab, strtab []byte, flags elf.SectionFlag, err error) {
	sym := func(name uint32, value, size uint64) []byte {
		e := make([]byte, elf.Sym64Size)
		binary.LittleEndian.PutUint32(e, name)
		e[4] = byte(elf.ST_INFO(elf.STB_GLOBAL, elf.STT_FUNC))
		binary.LittleEndian.PutUint16(e[6:], 1) // some defined section
		binary.LittleEndian.PutUint64(e[8:], value)
		binary.LittleEndian.PutUint64(e[16:], size)
		return e
	}
	null := make([]byte, elf.Sym64Size)
	switch kind {
	case Named, NamedZlib:
		symtab = append(null, sym(1, addr, size)...)
		strtab = []byte("\x00target\x00")
		if kind == NamedZlib {
			symtab, err = compressed(elf.COMPRESS_ZLIB, uint64(len(symtab)), symtab)
			flags = elf.SHF_COMPRESSED
		}
	case LongNames:
		// debug/elf shares the name rather than copying it; the reader
		// must still not return it.
		strtab = append([]byte{0}, bytes.Repeat([]byte("A"), 512<<10)...)
		const n = 20_000
		symtab = null
		for i := range uint64(n) {
			symtab = append(symtab, sym(1, addr+i*size/n, 0)...)
		}
	case ZstdBomb:
		symtab, flags = zstdZeros(ZstdBombBytes), elf.SHF_COMPRESSED
		strtab = []byte{0}
	case ZlibBomb:
		symtab, err = zlibZeros(ZlibBombBytes)
		flags, strtab = elf.SHF_COMPRESSED, []byte{0}
	default:
		err = fmt.Errorf("symbol table kind %d", kind)
	}
	return symtab, strtab, flags, err
}

// compressed returns an SHF_COMPRESSED section's contents: the ELF64
// compression header declaring size, then data compressed.
func compressed(typ elf.CompressionType, size uint64, data []byte) ([]byte, error) {
	var b bytes.Buffer
	b.Write(chdr(typ, size))
	w, err := zlib.NewWriterLevel(&b, zlib.BestCompression)
	if err != nil {
		return nil, err
	}
	w.Write(data)
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func chdr(typ elf.CompressionType, size uint64) []byte {
	h := make([]byte, 24)
	binary.LittleEndian.PutUint32(h, uint32(typ))
	binary.LittleEndian.PutUint64(h[8:], size)
	binary.LittleEndian.PutUint64(h[16:], 8)
	return h
}

// zlibZeros returns a zlib stream of n zeros (a multiple of 1 MiB) behind
// its compression header, without compressing n bytes: one flushed deflate
// run of 1 MiB of zeros refers only to itself, so it is repeated.
func zlibZeros(n int) ([]byte, error) {
	var run bytes.Buffer
	w, err := flate.NewWriter(&run, flate.BestCompression)
	if err != nil {
		return nil, err
	}
	w.Write(make([]byte, 1<<20))
	if err := w.Flush(); err != nil {
		return nil, err
	}
	b := append(chdr(elf.COMPRESS_ZLIB, uint64(n)), 0x78, 0xda)
	for range n >> 20 {
		b = append(b, run.Bytes()...)
	}
	// The final, empty, block; then Adler-32 of n zeros: a stays 1, b
	// grows by one a byte.
	b = append(b, 0x03, 0x00)
	return binary.BigEndian.AppendUint32(b, uint32(n%65521)<<16|1), nil
}

// zstdZeros writes a zstd frame by hand: RLE blocks of 128 KiB of zeros,
// four bytes each, n bytes in all (a multiple of 128 KiB).
func zstdZeros(n int) []byte {
	const block = 128 << 10
	b := chdr(elf.COMPRESS_ZSTD, uint64(n))
	b = binary.LittleEndian.AppendUint32(b, 0xFD2FB528)
	// Frame header: no single segment, no checksum, no content size;
	// a 128 KiB window (exponent 7).
	b = append(b, 0x00, 7<<3)
	for i := range n / block {
		last := 0
		if i == n/block-1 {
			last = 1
		}
		h := uint32(last) | 1<<1 | block<<3 // RLE block
		b = append(b, byte(h), byte(h>>8), byte(h>>16), 0)
	}
	return b
}

// section is one section header and, for a new section, its contents.
type section struct {
	name                            string
	typ                             elf.SectionType
	flags                           elf.SectionFlag
	addr, off, size, align, entsize uint64
	link, info                      uint32
	data                            []byte
}

// appendSections appends the contents of add, a section-name table and a
// section header table (a null section, keep, add, the names) to file,
// and points the ELF header at them.
func appendSections(file []byte, keep, add []section) ([]byte, error) {
	out := bytes.Clone(file)
	all := append(append([]section{{}}, keep...), add...)
	for i := len(keep) + 1; i < len(all); i++ {
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
		all[i].off, all[i].size = uint64(len(out)), uint64(len(all[i].data))
		out = append(out, all[i].data...)
	}
	names := []byte{0}
	nameOff := make([]uint32, len(all)+1)
	all = append(all, section{name: ".shstrtab", typ: elf.SHT_STRTAB, align: 1})
	for i := 1; i < len(all); i++ {
		nameOff[i] = uint32(len(names))
		names = append(append(names, all[i].name...), 0)
	}
	shstr := &all[len(all)-1]
	shstr.off, shstr.size = uint64(len(out)), uint64(len(names))
	out = append(out, names...)
	for len(out)%8 != 0 {
		out = append(out, 0)
	}
	if len(all) >= int(elf.SHN_LORESERVE) {
		return nil, errors.New("too many sections")
	}
	bo := binary.LittleEndian
	bo.PutUint64(out[40:], uint64(len(out))) // shoff
	bo.PutUint16(out[58:], 64)
	bo.PutUint16(out[60:], uint16(len(all)))
	bo.PutUint16(out[62:], uint16(len(all)-1))
	for i, s := range all {
		h := make([]byte, 64)
		bo.PutUint32(h, nameOff[i])
		bo.PutUint32(h[4:], uint32(s.typ))
		bo.PutUint64(h[8:], uint64(s.flags))
		bo.PutUint64(h[16:], s.addr)
		bo.PutUint64(h[24:], s.off)
		bo.PutUint64(h[32:], s.size)
		bo.PutUint32(h[40:], s.link)
		bo.PutUint32(h[44:], s.info)
		bo.PutUint64(h[48:], s.align)
		bo.PutUint64(h[56:], s.entsize)
		out = append(out, h...)
	}
	return out, nil
}
