// Package analysis tells where a crash happened before anyone downloads it:
// it walks the crashed thread's frame pointers from the core's registers,
// names each address with the ELF symbols of the mapped files (pure Go,
// cheap enough for every crash of a storm), derives a title and a stable
// signature for deduplication, and, when gdb is installed and the core is
// small enough, replaces the walk with gdb's full unwind of every thread.
package analysis

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// Mapping is one line of /proc/PID/maps that maps a file.
type Mapping struct {
	Start, End, Offset uint64
	Path               string
}

// ParseMaps reads /proc/PID/maps, keeping the mappings of files. It runs
// while the kernel holds the crashed process, so it reads the text in
// place: no line or field is copied but a mapping's path.
func ParseMaps(data []byte) []Mapping {
	var out []Mapping
	for len(data) > 0 {
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		if m, ok := parseMapping(line); ok {
			out = append(out, m)
		}
	}
	return out
}

// parseMapping reads one line of maps, "start-end perms offset dev inode
// path", when it maps a file: the path (which may hold spaces; " (deleted)"
// marks an unlinked file) is the rest of the line after the inode's
// padding.
func parseMapping(line []byte) (Mapping, bool) {
	var f [5][]byte
	rest := line
	for i := range f {
		var ok bool
		if f[i], rest, ok = bytes.Cut(bytes.TrimLeft(rest, " "), []byte{' '}); !ok {
			return Mapping{}, false
		}
	}
	p := bytes.TrimLeft(rest, " ")
	if len(p) == 0 || p[0] != '/' {
		return Mapping{}, false
	}
	lo, hi, _ := bytes.Cut(f[0], []byte{'-'})
	start, err1 := strconv.ParseUint(string(lo), 16, 64)
	end, err2 := strconv.ParseUint(string(hi), 16, 64)
	off, err3 := strconv.ParseUint(string(f[2]), 16, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return Mapping{}, false
	}
	return Mapping{Start: start, End: end, Offset: off, Path: string(bytes.TrimSuffix(p, []byte(" (deleted)")))}, true
}

// Opener opens the file of a mapping: /proc/PID/map_files while the
// process lives, the bundle's copy afterwards.
type Opener func(m Mapping) (io.ReaderAt, io.Closer, error)

// Symbolizer names addresses of one process. The files it reads are the
// crashed container's: each is read within the caps of elfread.go, and a
// file it cannot read leaves its frames unnamed and says why in Warnings.
type Symbolizer struct {
	maps     []Mapping
	open     Opener
	modules  map[string]*module
	warnings []string
}

// NewSymbolizer prepares a symbolizer over a process's file mappings.
func NewSymbolizer(maps []Mapping, open Opener) *Symbolizer {
	return &Symbolizer{maps: maps, open: open, modules: map[string]*module{}}
}

// maxWarnings bounds the warnings one symbolizer records.
const maxWarnings = 8

// module is what symbolizing has learnt of one ELF file.
type module struct {
	buildID string
	loads   []elf.ProgHeader
	// names holds the function of each virtual address looked up so far
	// ("" for none).
	names map[uint64]string
	// key is the file's identity, when it has one: names found in it are
	// shared through nameCache.
	key    fileKey
	hasKey bool
	// failed is set once the file proved unreadable; warned once its
	// reason is recorded.
	failed, warned bool
}

// Lookup is one address to name. Return addresses (every frame but the
// first) point after their call: Ret says so, and the call itself is
// looked up.
type Lookup struct {
	Addr uint64
	Ret  bool
}

// Frames names addresses, reading each mapped file's symbols once for all
// of them.
func (s *Symbolizer) Frames(look []Lookup) []bundle.Frame {
	out := make([]bundle.Frame, len(look))
	type todo struct {
		m      Mapping
		frames []int
	}
	pending := map[string]*todo{}
	for i, l := range look {
		a := l.Addr
		if l.Ret && a > 0 {
			a--
		}
		m, ok := s.mapping(a)
		if !ok {
			out[i] = bundle.Frame{Offset: l.Addr}
			continue
		}
		fileOff := a - m.Start + m.Offset
		out[i] = bundle.Frame{Module: path.Base(m.Path), Offset: fileOff}
		mod := s.module(m)
		if mod == nil {
			continue
		}
		out[i].BuildID = mod.buildID
		for _, p := range mod.loads {
			if fileOff >= p.Off && fileOff < p.Off+p.Filesz {
				out[i].Offset = fileOff - p.Off + p.Vaddr
				break
			}
		}
		if name, ok := mod.names[out[i].Offset]; ok || mod.failed {
			out[i].Function = name
			continue
		}
		if mod.hasKey {
			if name, ok := cachedName(mod.key, out[i].Offset); ok {
				mod.names[out[i].Offset] = name
				out[i].Function = name
				continue
			}
		}
		t := pending[m.Path]
		if t == nil {
			t = &todo{m: m}
			pending[m.Path] = t
		}
		t.frames = append(t.frames, i)
	}
	for p, t := range pending {
		mod := s.modules[p]
		var want []uint64
		for _, i := range t.frames {
			want = append(want, out[i].Offset)
		}
		s.resolve(t.m, mod, want)
		for _, i := range t.frames {
			out[i].Function = mod.names[out[i].Offset]
		}
	}
	return out
}

func (s *Symbolizer) mapping(addr uint64) (Mapping, bool) { return findMapping(s.maps, addr) }

// findMapping returns the mapping of maps that holds addr.
func findMapping(maps []Mapping, addr uint64) (Mapping, bool) {
	for _, m := range maps {
		if addr >= m.Start && addr < m.End {
			return m, true
		}
	}
	return Mapping{}, false
}

// Warnings says which files' frames are unnamed, and why.
func (s *Symbolizer) Warnings() []string { return s.warnings }

func (s *Symbolizer) warn(m Mapping, err error) {
	if len(s.warnings) < maxWarnings {
		s.warnings = append(s.warnings, fmt.Sprintf("symbols of %s: %v: its frames are unnamed", m.Path, err))
	}
}

// guard turns a panic while reading m (a malformed file the readers'
// checks missed) into a warning: it must never kill the helper.
func (s *Symbolizer) guard(m Mapping, failed func()) {
	if r := recover(); r != nil {
		failed()
		s.warn(m, fmt.Errorf("malformed file: %v", r))
	}
}

// module reads a file's headers: build-id and segments.
func (s *Symbolizer) module(m Mapping) (mod *module) {
	if mod, ok := s.modules[m.Path]; ok {
		return mod
	}
	s.modules[m.Path] = nil
	defer s.guard(m, func() { mod = nil })
	r, c, err := s.open(m)
	if err != nil {
		s.warn(m, err)
		return nil
	}
	defer c.Close()
	h, key, hasKey, err := readHeader(r)
	if err != nil {
		if !errors.Is(err, errNotELF) {
			s.warn(m, err)
		}
		return nil
	}
	mod = &module{buildID: h.buildID, loads: h.loads, names: map[uint64]string{}, key: key, hasKey: hasKey}
	s.modules[m.Path] = mod
	return mod
}

func (s *Symbolizer) openELF(m Mapping) (*elfFile, io.Closer, error) {
	r, c, err := s.open(m)
	if err != nil {
		return nil, nil, err
	}
	f, err := readELF(r)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return f, c, nil
}

// resolve names want (virtual addresses of mod): from a Go binary's pc
// table, then in one pass over its ELF symbols for the rest.
func (s *Symbolizer) resolve(m Mapping, mod *module, want []uint64) {
	defer s.guard(m, func() { mod.failed = true })
	f, c, err := s.openELF(m)
	if err != nil {
		mod.failed = true
		s.warn(m, err)
		return
	}
	defer c.Close()
	var rest []uint64
	found := map[uint64]string{}
	gt := f.goTable()
	for _, v := range want {
		if gt != nil {
			if name := gt.name(v); name != "" {
				mod.names[v], found[v] = name, name
				continue
			}
		}
		rest = append(rest, v)
	}
	var lookupErr error
	if len(rest) > 0 {
		slices.Sort(rest)
		rest = slices.Compact(rest)
		var names []string
		names, lookupErr = f.lookupSymbols(rest)
		if lookupErr != nil && !mod.warned {
			mod.warned = true
			s.warn(m, lookupErr)
		}
		for i, v := range rest {
			mod.names[v], found[v] = names[i], names[i]
		}
	}
	if mod.hasKey && lookupErr == nil {
		cacheNames(mod.key, found)
	}
}
