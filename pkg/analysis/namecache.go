package analysis

import (
	"debug/elf"
	"io"
	"os"
	"sync"
	"syscall"
)

// fileKey is a mapped file's identity: its inode, and the size and
// modification time a rewrite in place would change.
type fileKey struct {
	dev, ino, size uint64
	mtime          int64
}

// keyOf returns the identity of an opened file, when r is one.
func keyOf(r io.ReaderAt) (fileKey, bool) {
	f, ok := r.(*os.File)
	if !ok {
		return fileKey{}, false
	}
	fi, err := f.Stat()
	if err != nil {
		return fileKey{}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileKey{}, false
	}
	return fileKey{dev: st.Dev, ino: st.Ino, size: uint64(st.Size), mtime: fi.ModTime().UnixNano()}, true
}

// nameCacheMax bounds the names nameCache holds; past it, it starts over.
const nameCacheMax = 1 << 14

// nameCache keeps the function names resolved in each file across the
// symbolizers of one process: in the agent, a crash loop's frames are
// named without reading the same symbol tables again, which is what the
// kernel would otherwise hold a refused duplicate for. Files are known by
// their inode, never by a name or a build-id another file could claim.
var nameCache = struct {
	sync.Mutex
	byFile map[fileKey]map[uint64]string
	n      int
}{byFile: map[fileKey]map[uint64]string{}}

// cachedName returns the name resolved before at addr in the file key.
func cachedName(key fileKey, addr uint64) (string, bool) {
	nameCache.Lock()
	defer nameCache.Unlock()
	name, ok := nameCache.byFile[key][addr]
	return name, ok
}

// cacheNames keeps names (by virtual address) resolved in the file key.
func cacheNames(key fileKey, names map[uint64]string) {
	nameCache.Lock()
	defer nameCache.Unlock()
	if nameCache.n+len(names) > nameCacheMax {
		nameCache.byFile, nameCache.n = map[fileKey]map[uint64]string{}, 0
	}
	m := nameCache.byFile[key]
	if m == nil {
		m = map[uint64]string{}
		nameCache.byFile[key] = m
	}
	for a, name := range names {
		if _, ok := m[a]; !ok {
			nameCache.n++
		}
		m[a] = name
	}
}

// headerCacheMax bounds the files headerCache knows; past it, it starts
// over.
const headerCacheMax = 1 << 12

// header is what symbolizing needs of an ELF file's headers.
type header struct {
	buildID string
	loads   []elf.ProgHeader
}

// headerCache keeps the headers of the files symbolizers opened, by
// identity like nameCache: a crash loop's walk then reads no ELF header
// again (parsing them took most of a warm walk's 0.3 ms, while the kernel
// holds a refused duplicate).
var headerCache = struct {
	sync.Mutex
	byFile map[fileKey]header
}{byFile: map[fileKey]header{}}

// readHeader returns r's headers, from headerCache when r is a file read
// before, and r's identity when it has one (ok).
func readHeader(r io.ReaderAt) (h header, key fileKey, ok bool, err error) {
	key, ok = keyOf(r)
	if ok {
		headerCache.Lock()
		h, hit := headerCache.byFile[key]
		headerCache.Unlock()
		if hit {
			return h, key, ok, nil
		}
	}
	f, err := readELF(r)
	if err != nil {
		return header{}, key, ok, err
	}
	h = header{buildID: f.buildID(), loads: f.loads}
	if ok {
		headerCache.Lock()
		if len(headerCache.byFile) >= headerCacheMax {
			headerCache.byFile = map[fileKey]header{}
		}
		headerCache.byFile[key] = h
		headerCache.Unlock()
	}
	return h, key, ok, nil
}
