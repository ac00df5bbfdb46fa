package collector

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"sort"
)

// resolveAliases learns the names the crasher's dynamic loader gave its
// libraries and records each as an alias of the captured file.
//
// Why: gdb finds a core's shared libraries by the names in the loader's link
// map (r_debug.r_map), prefixed with `set sysroot`. Those names can differ
// from the paths /proc/PID/map_files reports: on merged-/usr systems the
// loader says /lib/x86_64-linux-gnu/libc.so.6 and /lib64/ld-linux-x86-64.so.2
// where the mapping is /usr/lib/x86_64-linux-gnu/... Without the alias gdb
// prints "Could not load shared library symbols".
//
// How: read the link map from the process's memory (/proc/PID/mem; the
// helper is root in the initial namespaces and the process is held by the
// kernel): auxv's AT_PHDR locates the executable's program headers, its
// PT_DYNAMIC holds DT_DEBUG, which points at r_debug, whose r_map starts the
// list of struct link_map {l_addr, l_name, l_ld, l_next, l_prev}. Each
// entry's l_ld (its dynamic section) lies inside one of the crasher's
// mappings, which names the captured file. Only addresses are followed,
// never paths, so a hostile process can at worst make us record a wrong
// alias for one of its own files. 64-bit processes only.
func (c *capture) resolveAliases() {
	mem, err := os.Open(filepath.Join(c.proc, "mem"))
	if err != nil {
		c.warn("read the loader's link map: %v", err)
		return
	}
	defer mem.Close()
	names, err := linkMap(mem, c.auxv)
	if err != nil {
		c.warn("read the loader's link map: %v", err)
		return
	}
	c.update(func() {
		for _, e := range names {
			i := sort.Search(len(c.mappings), func(i int) bool { return c.mappings[i].end > e.ld })
			if i == len(c.mappings) || c.mappings[i].start > e.ld {
				continue // the vdso, or a mapping that is not a regular file
			}
			if e.name != "" && e.name[0] == '/' {
				c.files[c.mappings[i].file].AddAlias(e.name)
			}
		}
	})
}

type linkEntry struct {
	name string
	ld   uint64
}

// Auxiliary vector keys (elf.h).
const (
	atNull  = 0
	atPhdr  = 3
	atPhent = 4
	atPhnum = 5
)

// linkMapError says why a process has no link map to read.
type linkMapError string

func (e linkMapError) Error() string { return string(e) }

// linkMap walks the dynamic loader's list of loaded objects in mem.
func linkMap(mem *os.File, auxv []byte) ([]linkEntry, error) {
	le := binary.LittleEndian
	var phdr, phent, phnum uint64
	for i := 0; i+16 <= len(auxv); i += 16 {
		k, v := le.Uint64(auxv[i:]), le.Uint64(auxv[i+8:])
		switch k {
		case atPhdr:
			phdr = v
		case atPhent:
			phent = v
		case atPhnum:
			phnum = v
		case atNull:
			i = len(auxv)
		}
	}
	if phdr == 0 || phent != 56 || phnum == 0 || phnum > 256 {
		return nil, linkMapError("no 64-bit program headers in auxv")
	}
	ph := make([]byte, phent*phnum)
	if _, err := mem.ReadAt(ph, int64(phdr)); err != nil {
		return nil, err
	}
	var bias, dyn uint64
	hasPhdr := false
	for i := uint64(0); i < phnum; i++ {
		p := ph[i*phent:]
		switch elf.ProgType(le.Uint32(p)) {
		case elf.PT_PHDR:
			bias, hasPhdr = phdr-le.Uint64(p[16:]), true
		case elf.PT_DYNAMIC:
			dyn = le.Uint64(p[16:])
		}
	}
	if dyn == 0 {
		return nil, nil // statically linked: no loader, no libraries
	}
	if !hasPhdr {
		return nil, linkMapError("the executable has PT_DYNAMIC but no PT_PHDR")
	}
	word := func(addr uint64) (uint64, error) {
		var b [8]byte
		_, err := mem.ReadAt(b[:], int64(addr))
		return le.Uint64(b[:]), err
	}
	var rdebug uint64
	for a, n := bias+dyn, 0; n < 512; a, n = a+16, n+1 {
		tag, err := word(a)
		if err != nil {
			return nil, err
		}
		if elf.DynTag(tag) == elf.DT_NULL {
			break
		}
		if elf.DynTag(tag) == elf.DT_DEBUG {
			if rdebug, err = word(a + 8); err != nil {
				return nil, err
			}
		}
	}
	if rdebug == 0 {
		return nil, linkMapError("DT_DEBUG is empty: the loader had not started")
	}
	lm, err := word(rdebug + 8) // r_debug.r_map, after int r_version and padding
	if err != nil {
		return nil, err
	}
	var out []linkEntry
	for n := 0; lm != 0 && n < 4096; n++ {
		var ent [40]byte
		if _, err := mem.ReadAt(ent[:], int64(lm)); err != nil {
			return out, err
		}
		nameAddr, ld := le.Uint64(ent[8:]), le.Uint64(ent[16:])
		name := make([]byte, 4096)
		k, _ := mem.ReadAt(name, int64(nameAddr))
		if end := bytes.IndexByte(name[:k], 0); end >= 0 {
			out = append(out, linkEntry{name: string(name[:end]), ld: ld})
		}
		lm = le.Uint64(ent[24:])
	}
	return out, nil
}
