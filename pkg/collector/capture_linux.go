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
	withEnviron  bool
	// light keeps the /proc texts and the JVM's error log only: the core
	// of a deduplicated or rate-limited crash is not kept, so neither are
	// the files a debugger would need for it.
	light bool
	// hsErr is the head of a JVM's fatal error log, which says where it
	// crashed.
	hsErr []byte
	// logTail bounds stderr, the end of the crasher's standard error when
	// that is a file of its own (a host process's log), where runtimes
	// write their last words.
	logTail  int64
	stderr   []byte
	nsPID    int
	files    []bundle.File
	mappings []mapping
	warnings []string
	cmdline  []string
	exe      []byte
	stored   map[string]bool
	seen     map[fileKey]int // inode → index in files
	auxv     []byte
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
	c.captureStderr()
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
		c.warn("capture %q: %v", text, err)
		return i
	}
	c.stored[stored] = true
	c.files[i].Stored = stored
	return i
}

// copyFile copies the inode behind link into the bundle as name, hashing it
// and reading its GNU build-id on the way.
func (c *capture) copyFile(link, name string, f *bundle.File) error {
	src, err := os.Open(link)
	if err != nil {
		return err
	}
	defer src.Close()
	f.BuildID = analysis.BuildID(src)
	dst, err := c.w.Create(name)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(dst, h), io.NewSectionReader(src, 0, c.maxFileBytes))
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	f.Size = n
	f.SHA256 = hex.EncodeToString(h.Sum(nil))
	return nil
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
	name := bundle.HsErrLog(c.nsPID)
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
	c.hsErr = head.Bytes()
}

// captureStderr keeps the end of the crasher's standard error when it is
// a regular file the crasher's user owns. /proc/PID/fd/2 opens the file
// the process holds, not a path; stat first, so that a device or a fifo
// is never opened.
func (c *capture) captureStderr() {
	link := filepath.Join(c.proc, "fd", "2")
	var st, owner unix.Stat_t
	if c.logTail <= 0 || unix.Stat(link, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || unix.Stat(c.proc, &owner) != nil ||
		st.Uid != owner.Uid {
		return
	}
	f, err := os.OpenFile(link, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		c.warn("open the crasher's stderr: %v", err)
		return
	}
	defer f.Close()
	var now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &now) != nil || now.Ino != st.Ino || now.Dev != st.Dev {
		return
	}
	off := max(now.Size-c.logTail, 0)
	data, err := io.ReadAll(io.NewSectionReader(f, off, c.logTail))
	if err != nil {
		c.warn("read the crasher's stderr: %v", err)
		return
	}
	if err := c.put(bundle.StderrLog, bytes.NewReader(data)); err != nil {
		c.warn("store %s: %v", bundle.StderrLog, err)
		return
	}
	c.stderr = data
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
