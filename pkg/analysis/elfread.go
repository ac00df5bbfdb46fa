package analysis

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/klauspost/compress/zstd"
)

// The files read here belong to the crashed container: a hostile one can
// declare any size, count or compression ratio. debug/elf's File.Symbols
// materializes every symbol and copies every name (a 1 MiB file whose
// symbols share one long name, or a 16 KB zstd section that inflates to
// 512 MiB, cost it gigabytes), so the analysis reads ELF itself, within
// these caps, and keeps only what the wanted addresses need.
const (
	// maxSections is the most section headers read from one file (ELF's
	// own limit without the extended count).
	maxSections = 1 << 16
	// maxSymbols is the most entries of one symbol table scanned: a huge
	// table cannot make every crash of a storm slow. The largest real
	// binaries (a browser with full symbols) hold about 1.5 million.
	maxSymbols = 2_000_000
	// maxInflatedBytes bounds the declared size of a compressed
	// (SHF_COMPRESSED) section: it is streamed, never held, but every
	// byte costs decompression time while the kernel holds the crasher.
	maxInflatedBytes = 64 << 20
	// maxZstdWindow bounds the memory a zstd-compressed section's decoder
	// may take, whatever its frame header asks.
	maxZstdWindow = 8 << 20
	// maxNameBytes cuts a symbol or function name (the longest real C++
	// names are a few KiB).
	maxNameBytes = 4 << 10
	// maxShstrtabBytes bounds the section-name table, which is held.
	maxShstrtabBytes = 1 << 20
	// maxNotes bounds the note segments and sections searched for a
	// build-id, each read up to 64 KiB.
	maxNotes = 16
	// maxLoads bounds the PT_LOAD segments kept.
	maxLoads = 256
)

// errLimit marks a file that exceeds one of the caps above: its frames
// stay unnamed, and the analysis says why.
var errLimit = errors.New("over the analysis limits")

// elfFile is what the analysis reads of one ELF file: segments, notes and
// the headers of the few sections it uses, never their contents.
type elfFile struct {
	r     io.ReaderAt
	bo    binary.ByteOrder
	class elf.Class
	loads []elf.ProgHeader
	notes []elfNote
	// symtab and dynsym are the symbol tables, with their string tables.
	symtab, strtab, dynsym, dynstr *elfSection
	// pclntab and text locate a Go binary's pc table.
	pclntab, text *elfSection
}

// elfNote is a note segment or section.
type elfNote struct{ off, size, align uint64 }

// elfSection is one section header.
type elfSection struct {
	typ                    elf.SectionType
	flags                  elf.SectionFlag
	addr, off, size, align uint64
	link, name             uint32
}

// readELF reads the headers of an ELF file within the caps.
func readELF(r io.ReaderAt) (*elfFile, error) {
	var ident [elf.EI_NIDENT]byte
	if _, err := r.ReadAt(ident[:], 0); err != nil {
		return nil, fmt.Errorf("read the ELF header: %w", err)
	}
	if !bytes.HasPrefix(ident[:], []byte(elf.ELFMAG)) {
		return nil, errNotELF
	}
	f := &elfFile{r: r, class: elf.Class(ident[elf.EI_CLASS])}
	switch elf.Data(ident[elf.EI_DATA]) {
	case elf.ELFDATA2LSB:
		f.bo = binary.LittleEndian
	case elf.ELFDATA2MSB:
		f.bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("ELF data encoding %d", ident[elf.EI_DATA])
	}
	var phoff, shoff uint64
	var phentsize, phnum, shentsize, shnum, shstrndx int
	switch f.class {
	case elf.ELFCLASS64:
		h := make([]byte, 64)
		if _, err := r.ReadAt(h, 0); err != nil {
			return nil, fmt.Errorf("read the ELF header: %w", err)
		}
		phoff, shoff = f.bo.Uint64(h[32:]), f.bo.Uint64(h[40:])
		phentsize, phnum = int(f.bo.Uint16(h[54:])), int(f.bo.Uint16(h[56:]))
		shentsize, shnum, shstrndx = int(f.bo.Uint16(h[58:])), int(f.bo.Uint16(h[60:])), int(f.bo.Uint16(h[62:]))
	case elf.ELFCLASS32:
		h := make([]byte, 52)
		if _, err := r.ReadAt(h, 0); err != nil {
			return nil, fmt.Errorf("read the ELF header: %w", err)
		}
		phoff, shoff = uint64(f.bo.Uint32(h[28:])), uint64(f.bo.Uint32(h[32:]))
		phentsize, phnum = int(f.bo.Uint16(h[42:])), int(f.bo.Uint16(h[44:]))
		shentsize, shnum, shstrndx = int(f.bo.Uint16(h[46:])), int(f.bo.Uint16(h[48:])), int(f.bo.Uint16(h[50:]))
	default:
		return nil, fmt.Errorf("ELF class %d", ident[elf.EI_CLASS])
	}
	if err := f.readProgs(phoff, phentsize, phnum); err != nil {
		return nil, err
	}
	if shoff == 0 {
		return f, nil
	}
	if shnum == 0 || shstrndx == int(elf.SHN_XINDEX) {
		// More sections than fit the header: section 0 holds the counts.
		s0, err := f.section(shoff, shentsize, 0)
		if err != nil {
			return nil, err
		}
		if shnum == 0 {
			if s0.size > maxSections {
				return nil, fmt.Errorf("%d section headers, more than %d: %w", s0.size, maxSections, errLimit)
			}
			shnum = int(s0.size)
		}
		if shstrndx == int(elf.SHN_XINDEX) {
			shstrndx = int(s0.link)
		}
	}
	return f, f.readSections(shoff, shentsize, shnum, shstrndx)
}

var errNotELF = errors.New("not an ELF file")

// readProgs keeps the PT_LOAD and PT_NOTE program headers.
func (f *elfFile) readProgs(off uint64, entsize, n int) error {
	want := 56
	if f.class == elf.ELFCLASS32 {
		want = 32
	}
	if n == 0 {
		return nil
	}
	// As the kernel's loader does: another size is no executable's, and
	// a larger one would make the headers up to 4 GiB.
	if entsize != want {
		return fmt.Errorf("program header size %d, not %d", entsize, want)
	}
	br := bufio.NewReaderSize(io.NewSectionReader(f.r, int64(off), int64(n*entsize)), 64<<10)
	h := make([]byte, entsize)
	for range n {
		if _, err := io.ReadFull(br, h); err != nil {
			return fmt.Errorf("read program headers: %w", err)
		}
		var p elf.ProgHeader
		if f.class == elf.ELFCLASS64 {
			p = elf.ProgHeader{Type: elf.ProgType(f.bo.Uint32(h)), Off: f.bo.Uint64(h[8:]), Vaddr: f.bo.Uint64(h[16:]),
				Filesz: f.bo.Uint64(h[32:]), Memsz: f.bo.Uint64(h[40:]), Align: f.bo.Uint64(h[48:])}
		} else {
			p = elf.ProgHeader{Type: elf.ProgType(f.bo.Uint32(h)), Off: uint64(f.bo.Uint32(h[4:])), Vaddr: uint64(f.bo.Uint32(h[8:])),
				Filesz: uint64(f.bo.Uint32(h[16:])), Memsz: uint64(f.bo.Uint32(h[20:])), Align: uint64(f.bo.Uint32(h[28:]))}
		}
		switch {
		case p.Type == elf.PT_LOAD && len(f.loads) < maxLoads:
			f.loads = append(f.loads, p)
		case p.Type == elf.PT_NOTE && len(f.notes) < maxNotes:
			f.notes = append(f.notes, elfNote{off: p.Off, size: p.Filesz, align: p.Align})
		}
	}
	return nil
}

// section reads section header i.
func (f *elfFile) section(shoff uint64, entsize, i int) (*elfSection, error) {
	if want := f.sectionSize(); entsize != want {
		return nil, fmt.Errorf("section header size %d, not %d", entsize, want)
	}
	h := make([]byte, entsize)
	if _, err := f.r.ReadAt(h, int64(shoff)+int64(i)*int64(entsize)); err != nil {
		return nil, fmt.Errorf("read section header %d: %w", i, err)
	}
	return f.parseSection(h), nil
}

// sectionSize is the size of a section header of the file's class.
func (f *elfFile) sectionSize() int {
	if f.class == elf.ELFCLASS32 {
		return 40
	}
	return 64
}

func (f *elfFile) parseSection(h []byte) *elfSection {
	if f.class == elf.ELFCLASS64 {
		return &elfSection{name: f.bo.Uint32(h), typ: elf.SectionType(f.bo.Uint32(h[4:])), flags: elf.SectionFlag(f.bo.Uint64(h[8:])),
			addr: f.bo.Uint64(h[16:]), off: f.bo.Uint64(h[24:]), size: f.bo.Uint64(h[32:]), link: f.bo.Uint32(h[40:]), align: f.bo.Uint64(h[48:])}
	}
	return &elfSection{name: f.bo.Uint32(h), typ: elf.SectionType(f.bo.Uint32(h[4:])), flags: elf.SectionFlag(f.bo.Uint32(h[8:])),
		addr: uint64(f.bo.Uint32(h[12:])), off: uint64(f.bo.Uint32(h[16:])), size: uint64(f.bo.Uint32(h[20:])),
		link: f.bo.Uint32(h[24:]), align: uint64(f.bo.Uint32(h[32:]))}
}

// readSections streams the section headers and keeps those the analysis
// uses; the section-name table is read only when it is small.
func (f *elfFile) readSections(shoff uint64, entsize, n, shstrndx int) error {
	if n > maxSections {
		return fmt.Errorf("%d section headers, more than %d: %w", n, maxSections, errLimit)
	}
	if want := f.sectionSize(); entsize != want {
		return fmt.Errorf("section header size %d, not %d", entsize, want)
	}
	var names []byte
	if shstrndx > 0 && shstrndx < n {
		s, err := f.section(shoff, entsize, shstrndx)
		if err != nil {
			return err
		}
		if s.typ == elf.SHT_STRTAB && s.flags&elf.SHF_COMPRESSED == 0 && s.size <= maxShstrtabBytes {
			names = make([]byte, s.size)
			if _, err := f.r.ReadAt(names, int64(s.off)); err != nil {
				names = nil
			}
		}
	}
	named := func(s *elfSection, want string) bool {
		return int(s.name) < len(names) && bytes.HasPrefix(names[s.name:], append([]byte(want), 0))
	}
	br := bufio.NewReaderSize(io.NewSectionReader(f.r, int64(shoff), int64(n)*int64(entsize)), 64<<10)
	h := make([]byte, entsize)
	var symtab, dynsym uint32
	for range n {
		if _, err := io.ReadFull(br, h); err != nil {
			return fmt.Errorf("read section headers: %w", err)
		}
		s := f.parseSection(h)
		switch {
		case s.typ == elf.SHT_SYMTAB && f.symtab == nil:
			f.symtab, symtab = s, s.link
		case s.typ == elf.SHT_DYNSYM && f.dynsym == nil:
			f.dynsym, dynsym = s, s.link
		case s.typ == elf.SHT_NOTE && len(f.notes) < maxNotes && s.flags&elf.SHF_COMPRESSED == 0:
			f.notes = append(f.notes, elfNote{off: s.off, size: s.size, align: s.align})
		case s.typ == elf.SHT_PROGBITS && named(s, ".gopclntab"):
			f.pclntab = s
		case s.typ == elf.SHT_PROGBITS && named(s, ".text"):
			f.text = s
		}
	}
	var err error
	if f.symtab != nil {
		if f.strtab, err = f.linked(shoff, entsize, n, symtab); err != nil {
			f.symtab = nil
		}
	}
	if f.dynsym != nil {
		if f.dynstr, err = f.linked(shoff, entsize, n, dynsym); err != nil {
			f.dynsym = nil
		}
	}
	return nil
}

// linked reads the string table a symbol table links to.
func (f *elfFile) linked(shoff uint64, entsize, n int, link uint32) (*elfSection, error) {
	if link == 0 || int(link) >= n {
		return nil, errors.New("no string table")
	}
	s, err := f.section(shoff, entsize, int(link))
	if err != nil {
		return nil, err
	}
	if s.typ != elf.SHT_STRTAB {
		return nil, errors.New("the linked section is no string table")
	}
	return s, nil
}

// open returns a reader of a section's contents, inflated when the section
// is compressed, and their size; a size over max is refused before a byte
// is read. The caller closes the reader.
func (f *elfFile) open(s *elfSection, max uint64) (io.ReadCloser, uint64, error) {
	raw := io.NewSectionReader(f.r, int64(s.off), int64(s.size))
	if s.flags&elf.SHF_COMPRESSED == 0 {
		if s.size > max {
			return nil, 0, fmt.Errorf("%d bytes, more than %d: %w", s.size, max, errLimit)
		}
		return io.NopCloser(raw), s.size, nil
	}
	var typ elf.CompressionType
	var size, hdr uint64
	if f.class == elf.ELFCLASS64 {
		h := make([]byte, 24)
		if _, err := raw.ReadAt(h, 0); err != nil {
			return nil, 0, fmt.Errorf("read the compression header: %w", err)
		}
		typ, size, hdr = elf.CompressionType(f.bo.Uint32(h)), f.bo.Uint64(h[8:]), 24
	} else {
		h := make([]byte, 12)
		if _, err := raw.ReadAt(h, 0); err != nil {
			return nil, 0, fmt.Errorf("read the compression header: %w", err)
		}
		typ, size, hdr = elf.CompressionType(f.bo.Uint32(h)), uint64(f.bo.Uint32(h[4:])), 12
	}
	if size > maxInflatedBytes || size > max {
		return nil, 0, fmt.Errorf("compressed section inflates to %d bytes, more than %d: %w", size, min(max, maxInflatedBytes), errLimit)
	}
	body := io.NewSectionReader(raw, int64(hdr), int64(s.size)-int64(hdr))
	var rc io.ReadCloser
	switch typ {
	case elf.COMPRESS_ZLIB:
		z, err := zlib.NewReader(body)
		if err != nil {
			return nil, 0, fmt.Errorf("zlib section: %w", err)
		}
		rc = z
	case elf.COMPRESS_ZSTD:
		z, err := zstd.NewReader(body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(maxInflatedBytes))
		if err != nil {
			return nil, 0, fmt.Errorf("zstd section: %w", err)
		}
		rc = z.IOReadCloser()
	default:
		return nil, 0, fmt.Errorf("compression type %d", typ)
	}
	// A stream that inflates beyond what it declared is cut there.
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(rc, int64(size)), rc}, size, nil
}

// symbol is what a lookup keeps of one candidate symbol.
type symbol struct {
	value, size uint64
	name        uint32
	ok          bool
}

// lookupSymbols names each of want (sorted virtual addresses) with the
// function symbol nearest at or below it, in one pass over the file's
// symbol table (.symtab, else .dynsym): only one candidate per address is
// kept, and only the chosen names are read. Names are "" where no symbol
// covers the address.
func (f *elfFile) lookupSymbols(want []uint64) ([]string, error) {
	tab, str := f.symtab, f.strtab
	best, err := f.scanSymbols(tab, want)
	if tab == nil || err != nil {
		// No full table, or one over the caps: the dynamic one may do.
		tab, str = f.dynsym, f.dynstr
		var derr error
		if best, derr = f.scanSymbols(tab, want); derr != nil && err == nil {
			err = derr
		}
	}
	names := make([]string, len(want))
	if tab == nil || best == nil {
		return names, err
	}
	var offs []uint32
	for i, b := range best {
		if b.ok && (b.size == 0 || want[i] < b.value+b.size) {
			offs = append(offs, b.name)
		}
	}
	byOff, nerr := f.readNames(str, offs)
	for i, b := range best {
		if b.ok && (b.size == 0 || want[i] < b.value+b.size) {
			names[i] = byOff[b.name]
		}
	}
	return names, errors.Join(err, nerr)
}

// scanSymbols streams a symbol table and keeps, for each wanted address,
// the function symbol with the greatest value at or below it.
func (f *elfFile) scanSymbols(tab *elfSection, want []uint64) ([]symbol, error) {
	if tab == nil {
		return nil, nil
	}
	entsize := uint64(elf.Sym64Size)
	if f.class == elf.ELFCLASS32 {
		entsize = elf.Sym32Size
	}
	rc, size, err := f.open(tab, maxSymbols*entsize)
	if err != nil {
		return nil, fmt.Errorf("symbol table: %w", err)
	}
	defer rc.Close()
	best := make([]symbol, len(want))
	br := bufio.NewReaderSize(rc, 64<<10)
	e := make([]byte, entsize)
	for range size / entsize {
		if _, err := io.ReadFull(br, e); err != nil {
			return best, fmt.Errorf("read the symbol table: %w", err)
		}
		var s symbol
		var info byte
		var shndx uint16
		if f.class == elf.ELFCLASS64 {
			s.name, info, shndx, s.value, s.size = f.bo.Uint32(e), e[4], f.bo.Uint16(e[6:]), f.bo.Uint64(e[8:]), f.bo.Uint64(e[16:])
		} else {
			s.name, s.value, s.size, info, shndx = f.bo.Uint32(e), uint64(f.bo.Uint32(e[4:])), uint64(f.bo.Uint32(e[8:])), e[12], f.bo.Uint16(e[14:])
		}
		if elf.ST_TYPE(info) != elf.STT_FUNC || s.value == 0 || elf.SectionIndex(shndx) == elf.SHN_UNDEF {
			continue
		}
		s.ok = true
		// The best value for sorted addresses never decreases: the
		// addresses this symbol improves are a run from the first one at
		// or above it.
		for i := sort.Search(len(want), func(i int) bool { return want[i] >= s.value }); i < len(want); i++ {
			if best[i].ok && best[i].value >= s.value {
				break
			}
			best[i] = s
		}
	}
	return best, nil
}

// readNames reads the names at offsets of a string table, each cut at
// maxNameBytes: by offset when the table is stored plainly, in one pass
// over the inflated table when it is compressed.
func (f *elfFile) readNames(str *elfSection, offs []uint32) (map[uint32]string, error) {
	out := map[uint32]string{}
	if str == nil || len(offs) == 0 {
		return out, nil
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	if str.flags&elf.SHF_COMPRESSED == 0 {
		buf := make([]byte, maxNameBytes)
		for _, off := range offs {
			if uint64(off) >= str.size {
				continue
			}
			n, _ := io.NewSectionReader(f.r, int64(str.off), int64(str.size)).ReadAt(buf, int64(off))
			name, err := cString(buf[:n])
			if err != nil {
				return out, err
			}
			out[off] = name
		}
		return out, nil
	}
	rc, _, err := f.open(str, maxInflatedBytes)
	if err != nil {
		return out, fmt.Errorf("string table: %w", err)
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 64<<10)
	pos := uint64(0)
	for _, off := range offs {
		if _, ok := out[off]; ok {
			continue
		}
		if _, err := br.Discard(int(uint64(off) - pos)); err != nil {
			return out, fmt.Errorf("read the string table: %w", err)
		}
		pos = uint64(off)
		b, _ := br.Peek(maxNameBytes)
		name, err := cString(b)
		if err != nil {
			return out, err
		}
		out[off] = name
	}
	return out, nil
}

// cString returns the NUL-terminated string at the start of b, an error
// when b holds no NUL: a name longer than maxNameBytes is a hostile one.
func cString(b []byte) (string, error) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", fmt.Errorf("a name longer than %d bytes: %w", maxNameBytes, errLimit)
	}
	return string(b[:i]), nil
}
