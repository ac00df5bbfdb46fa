package collector

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/analysis"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

// capture reads what only the still-present crashed process can give: its
// executable, every file it had mapped, and its /proc texts.
//
// Security: the crasher may be a hostile container, and the helper runs as
// root on the host. Nothing here resolves a path the container controls
// through the host's root. Executables and libraries are opened through
// /proc/PID/exe and /proc/PID/map_files/*, which open the mapped inode
// itself (a library swapped for a symlink to a host file after it was mapped
// still yields the library's bytes). The only file read by name, a JVM's
// hs_err log, is opened beneath the process's working directory with
// symlinks refused.
type capture struct {
	proc         string // /proc/PID
	w            store.Writer
	maxFileBytes int64
	// budget is collect.max_files_total_bytes: the data bytes all captured
	// files may take together; used is what they took so far.
	budget, used int64
	// charge takes a file's data bytes from the store's room, never
	// deleting a bundle for them (coreStream.charge); false: no room.
	charge      func(n int64) bool
	withEnviron bool
	// light keeps the /proc texts and the JVM's error log only: the core
	// of a deduplicated or rate-limited crash is not kept, so neither are
	// the files a debugger would need for it.
	light bool
	// hsErrFrame is where a JVM's fatal error log says it crashed.
	hsErrFrame *bundle.Frame
	nsPID      int
	files      []bundle.File
	mappings   []mapping
	warnings   []string
	cmdline    []string
	exe        []byte
	stored     map[string]bool
	seen       map[fileKey]int // inode → index in files
	auxv       []byte
}

type fileKey struct{ dev, ino uint64 }

// mapping is one file-backed address range of the crasher.
type mapping struct {
	start, end uint64
	file       int // index in capture.files
}

func (c *capture) warn(format string, args ...any) {
	c.warnings = append(c.warnings, fmt.Sprintf(format, args...))
}

// run captures everything it can; each failure becomes a warning in the
// bundle rather than an error, because a bundle with a core and half its
// files beats no bundle.
func (c *capture) run() {
	c.stored = map[string]bool{}
	c.seen = map[fileKey]int{}
	c.captureTexts()
	if c.light {
		if target, err := os.Readlink(filepath.Join(c.proc, "exe")); err == nil {
			c.exe = []byte(target)
		}
	} else {
		c.captureExe()
		c.captureMapped()
		c.resolveAliases()
	}
	c.captureHsErr()
}

func (c *capture) captureTexts() {
	names := bundle.ProcTexts
	if c.withEnviron {
		names = append(names[:len(names):len(names)], bundle.EnvironText)
	}
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(c.proc, name))
		if err != nil {
			c.warn("read %s: %v", name, err)
			continue
		}
		if err := c.put(bundle.ProcDir+"/"+name, bytes.NewReader(data)); err != nil {
			c.warn("store %s: %v", name, err)
		}
		switch name {
		case "cmdline":
			for _, a := range bytes.Split(bytes.TrimSuffix(data, []byte{0}), []byte{0}) {
				s, _ := bundle.Text(a)
				c.cmdline = append(c.cmdline, s)
			}
		case "status":
			c.nsPID = nsPID(data)
		case "auxv":
			c.auxv = data
		}
	}
}

// nsPID returns the innermost pid of a /proc/PID/status "NSpid:" line.
func nsPID(status []byte) int {
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[len(f)-1])
				return n
			}
		}
	}
	return 0
}

func (c *capture) put(name string, r io.Reader) error {
	f, err := c.w.Create(name)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (c *capture) captureExe() {
	link := filepath.Join(c.proc, "exe")
	target, err := os.Readlink(link)
	if err != nil {
		c.warn("read the executable's name: %v", err)
		return
	}
	c.exe = []byte(target)
	c.captureFile(link, target, "exe")
}

// captureMapped walks /proc/PID/map_files: one entry per file-backed range,
// named "start-end", each a link that opens the mapped inode.
func (c *capture) captureMapped() {
	dir := filepath.Join(c.proc, "map_files")
	entries, err := os.ReadDir(dir)
	if err != nil {
		c.warn("list mapped files: %v", err)
		return
	}
	for _, e := range entries {
		lo, hi, ok := strings.Cut(e.Name(), "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		link := filepath.Join(dir, e.Name())
		target, err := os.Readlink(link)
		if err != nil {
			c.warn("read mapping %s: %v", e.Name(), err)
			continue
		}
		if i := c.captureFile(link, target, "mapped"); i >= 0 {
			c.mappings = append(c.mappings, mapping{start: start, end: end, file: i})
		}
	}
	sort.Slice(c.mappings, func(a, b int) bool { return c.mappings[a].start < c.mappings[b].start })
}

// captureFile copies the inode behind a magic link (exe or map_files) into
// the bundle once, and returns its index in c.files, or -1 when the link
// names no regular file.
func (c *capture) captureFile(link, target, role string) int {
	// Stat before opening: opening a mapped device could have side effects.
	var st unix.Stat_t
	if err := unix.Stat(link, &st); err != nil {
		c.warn("stat %q: %v", target, err)
		return -1
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1
	}
	key := fileKey{st.Dev, st.Ino}
	if i, ok := c.seen[key]; ok {
		return i
	}
	name := target
	deleted := false
	if st.Nlink == 0 {
		if n, ok := strings.CutSuffix(target, " (deleted)"); ok {
			name, deleted = n, true
		}
	}
	text, raw := bundle.Text([]byte(name))
	f := bundle.File{Path: text, PathRaw: raw, Size: st.Size, Role: role, Deleted: deleted}
	if deleted {
		f.AddAlias(target)
	}
	c.seen[key] = len(c.files)
	c.files = append(c.files, f)
	i := len(c.files) - 1
	if st.Size > c.maxFileBytes {
		c.files[i].Skipped = fmt.Sprintf("larger than collect.max_file_bytes (%d bytes)", c.maxFileBytes)
		return i
	}
	stored, err := bundle.StoredName(name)
	if err != nil {
		c.files[i].Skipped = err.Error()
		return i
	}
	if c.stored[stored] {
		// Two inodes under one name (a library replaced while mapped):
		// keep both, the second beside the first.
		stored = fmt.Sprintf("%s.inode-%d", stored, st.Ino)
	}
	if err := c.copyFile(link, stored, &c.files[i]); err != nil {
		c.files[i].Skipped = err.Error()
		if !errors.Is(err, errNoRoom) {
			c.warn("capture %q: %v", text, err)
		}
		return i
	}
	c.stored[stored] = true
	c.files[i].Stored = stored
	return i
}

// errNoRoom marks a file skipped for the bundle's budget or the store's
// room: a recorded reason, not a failure.
var errNoRoom = errors.New("no room")

// extent is a run of data in a sparse file.
type extent struct{ off, n int64 }

// dataExtents lists the data of the first size bytes of f, skipping its
// holes (SEEK_DATA/SEEK_HOLE). A filesystem that cannot tell reports the
// whole range as data.
func dataExtents(f *os.File, size int64) []extent {
	var out []extent
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || (err == nil && data >= size) {
			break // only a hole is left
		}
		if err != nil {
			return []extent{{off, size - off}}
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil || hole > size {
			hole = size
		}
		out = append(out, extent{data, hole - data})
		off = hole
	}
	return out
}

// holeKeeper is a store writer whose files keep holes (store.File's).
type holeKeeper interface{ KeepsHoles() bool }

// copyFile copies the inode behind link into the bundle as name, hashing it
// and reading its GNU build-id on the way. Holes stay holes where the store
// can keep them, and only data bytes count against the bundle's budget and
// the store's room; where it cannot, holes are written out and count too.
func (c *capture) copyFile(link, name string, f *bundle.File) error {
	src, err := os.Open(link)
	if err != nil {
		return err
	}
	defer src.Close()
	size := min(f.Size, c.maxFileBytes)
	extents := dataExtents(src, size)
	sparse := false
	if hk, ok := c.w.(holeKeeper); ok {
		sparse = hk.KeepsHoles()
	}
	cost := size
	if sparse {
		cost = 0
		for _, e := range extents {
			cost += e.n
		}
	}
	if c.used+cost > c.budget {
		return fmt.Errorf("%w: its %d data bytes would take the bundle's files past collect.max_files_total_bytes (%d of %d bytes used)", errNoRoom, cost, c.used, c.budget)
	}
	if c.charge != nil && !c.charge(cost) {
		return fmt.Errorf("%w: its %d data bytes do not fit in the store's room under retention.max_use/keep_free, and a captured file never deletes another bundle", errNoRoom, cost)
	}
	c.used += cost
	f.BuildID = analysis.BuildID(src)
	dst, err := c.w.Create(name)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := copyExtents(dst, h, src, extents, size, sparse)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	f.Size, f.DataBytes = n, cost
	f.SHA256 = hex.EncodeToString(h.Sum(nil))
	return nil
}

// zeros stands for a hole in the hash and, where holes cannot be kept, in
// the copy.
var zeros = make([]byte, chunk)

// copyExtents copies the data extents of src into dst, hashing the whole
// file (holes as zeros) into h, and returns the bytes copied (size, unless
// src shrank meanwhile). With sparse, dst is seeked past holes and
// truncated to size at the end; otherwise holes are written as zeros.
func copyExtents(dst io.Writer, h io.Writer, src *os.File, extents []extent, size int64, sparse bool) (int64, error) {
	type seekTruncater interface {
		io.Seeker
		Truncate(int64) error
	}
	st, _ := dst.(seekTruncater)
	sparse = sparse && st != nil
	hole := func(n int64) error {
		for n > 0 {
			k := min(n, int64(len(zeros)))
			h.Write(zeros[:k])
			if !sparse {
				if _, err := dst.Write(zeros[:k]); err != nil {
					return err
				}
			}
			n -= k
		}
		return nil
	}
	var pos int64
	for _, e := range append(extents, extent{size, 0}) {
		if err := hole(e.off - pos); err != nil {
			return pos, err
		}
		if sparse && e.off > pos {
			if _, err := st.Seek(e.off, io.SeekStart); err != nil {
				return pos, err
			}
		}
		pos = e.off
		n, err := io.Copy(io.MultiWriter(dst, h), io.NewSectionReader(src, e.off, e.n))
		pos += n
		if err != nil {
			return pos, err
		}
		if n < e.n {
			break // the file shrank while it was read
		}
	}
	if sparse {
		if err := st.Truncate(pos); err != nil {
			return pos, err
		}
	}
	return pos, nil
}

// captureHsErr keeps a JVM's fatal error log, which the JVM writes to its
// working directory as hs_err_pid<pid>.log (its own namespace's pid) just
// before it aborts.
func (c *capture) captureHsErr() {
	if c.nsPID == 0 {
		return
	}
	// /proc/PID/cwd is a magic link: opening it lands on the process's
	// working directory itself, not on a host path of the same name.
	cwd, err := unix.Open(filepath.Join(c.proc, "cwd"), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(cwd)
	name := fmt.Sprintf("hs_err_pid%d.log", c.nsPID)
	fd, err := unix.Openat2(cwd, name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			c.warn("open %s: %v", name, err)
		}
		return
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		c.warn("%s is not a regular file; not kept", name)
		return
	}
	var head bytes.Buffer
	r := io.TeeReader(io.LimitReader(f, 16<<20), &limitedBuffer{&head, 256 << 10})
	if err := c.put(name, r); err != nil {
		c.warn("store %s: %v", name, err)
	}
	if fr, ok := analysis.HsErrFrame(head.Bytes()); ok {
		c.hsErrFrame = &fr
	}
}

// limitedBuffer keeps the first max bytes written to it and accepts the
// rest unseen.
type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}
