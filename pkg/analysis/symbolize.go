// Package analysis tells where a crash happened before anyone downloads it:
// it walks the crashed thread's frame pointers from the core's registers,
// names each address with the ELF symbols of the mapped files (pure Go,
// cheap enough for every crash of a storm), derives a title and a stable
// signature for deduplication, and, when gdb is installed and the core is
// small enough, replaces the walk with gdb's full unwind of every thread.
package analysis

import (
	"bufio"
	"bytes"
	"debug/elf"
	"debug/gosym"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// Mapping is one line of /proc/PID/maps that maps a file.
type Mapping struct {
	Start, End, Offset uint64
	Path               string
}

// ParseMaps reads /proc/PID/maps, keeping the mappings of files.
func ParseMaps(data []byte) []Mapping {
	var out []Mapping
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || !strings.HasPrefix(f[5], "/") {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		off, err3 := strconv.ParseUint(f[2], 16, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		// A path may hold spaces; " (deleted)" marks an unlinked file.
		p := strings.Join(f[5:], " ")
		out = append(out, Mapping{Start: start, End: end, Offset: off, Path: strings.TrimSuffix(p, " (deleted)")})
	}
	return out
}

// Opener opens the file of a mapping: /proc/PID/map_files while the
// process lives, the bundle's copy afterwards.
type Opener func(m Mapping) (io.ReaderAt, io.Closer, error)

// Symbolizer names addresses of one process.
type Symbolizer struct {
	maps    []Mapping
	open    Opener
	modules map[string]*module
}

// NewSymbolizer prepares a symbolizer over a process's file mappings.
func NewSymbolizer(maps []Mapping, open Opener) *Symbolizer {
	return &Symbolizer{maps: maps, open: open, modules: map[string]*module{}}
}

// module is what symbolizing needs of one ELF file.
type module struct {
	buildID string
	loads   []elf.ProgHeader
	funcs   []elf.Symbol // sorted by Value
	// gosym names the functions of a Go binary from the runtime's own pc
	// table, which survives stripping and is exact where ELF symbols of an
	// externally linked (cgo) binary are not.
	gosym *gosym.Table
}

// maxSymbols bounds the symbols read from one file, so that a huge binary
// cannot make every crash of a storm expensive.
const maxSymbols = 2_000_000

func (s *Symbolizer) module(m Mapping) *module {
	if mod, ok := s.modules[m.Path]; ok {
		return mod
	}
	s.modules[m.Path] = nil
	r, c, err := s.open(m)
	if err != nil {
		return nil
	}
	defer c.Close()
	f, err := elf.NewFile(r)
	if err != nil {
		return nil
	}
	mod := &module{buildID: buildIDOf(f)}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			mod.loads = append(mod.loads, p.ProgHeader)
		}
	}
	syms, err := f.Symbols()
	if err != nil || len(syms) == 0 {
		syms, _ = f.DynamicSymbols()
	}
	if len(syms) <= maxSymbols {
		for _, sym := range syms {
			if elf.ST_TYPE(sym.Info) == elf.STT_FUNC && sym.Value != 0 {
				mod.funcs = append(mod.funcs, sym)
			}
		}
	}
	sort.Slice(mod.funcs, func(i, j int) bool { return mod.funcs[i].Value < mod.funcs[j].Value })
	mod.gosym = goTable(f)
	s.modules[m.Path] = mod
	return mod
}

// Frame names one address. Return addresses (every frame but the first)
// point after their call: pass them as found, with ret true, and the call
// itself is looked up.
func (s *Symbolizer) Frame(addr uint64, ret bool) bundle.Frame {
	look := addr
	if ret && look > 0 {
		look--
	}
	for _, m := range s.maps {
		if look < m.Start || look >= m.End {
			continue
		}
		fr := bundle.Frame{Module: path.Base(m.Path), Offset: look - m.Start + m.Offset}
		mod := s.module(m)
		if mod == nil {
			return fr
		}
		fr.BuildID = mod.buildID
		fileOff := look - m.Start + m.Offset
		for _, p := range mod.loads {
			if fileOff >= p.Off && fileOff < p.Off+p.Filesz {
				fr.Offset = fileOff - p.Off + p.Vaddr
				break
			}
		}
		fr.Function = mod.lookup(fr.Offset)
		return fr
	}
	return bundle.Frame{Offset: addr}
}

// goTable reads a Go binary's pc table, nil for other binaries.
func goTable(f *elf.File) *gosym.Table {
	pcln, text := f.Section(".gopclntab"), f.Section(".text")
	if pcln == nil || text == nil || pcln.Size > 256<<20 {
		return nil
	}
	data, err := pcln.Data()
	if err != nil {
		return nil
	}
	t, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return nil
	}
	return t
}

// lookup returns the function covering vaddr.
func (m *module) lookup(vaddr uint64) string {
	if m.gosym != nil {
		if fn := m.gosym.PCToFunc(vaddr); fn != nil && fn.Name != "" {
			return fn.Name
		}
	}
	i := sort.Search(len(m.funcs), func(i int) bool { return m.funcs[i].Value > vaddr }) - 1
	if i < 0 {
		return ""
	}
	sym := m.funcs[i]
	if sym.Size != 0 && vaddr >= sym.Value+sym.Size {
		return ""
	}
	return sym.Name
}
