package collector

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/analysis"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/proc"
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
//
// Time: every read here can block in the kernel for ever (a FUSE server in
// the container that never answers, a dead NFS server, a cmdline in memory
// the process mapped from one), and no read can be cancelled. So capture
// runs in a goroutine of its own that the helper abandons at
// collect.capture_timeout (wait): the pipe and the collection slot are let
// go with what was gathered, and the process's exit ends the goroutine.
// Files on FUSE and network filesystems are not read at all by default
// (collect.read_network_files).
type capture struct {
	proc string // /proc/PID
	// w starts the bundle's files: the store's writer, or for a crash
	// refused before its dump the memory the refusal is written from.
	w            creator
	maxFileBytes int64
	// budget is collect.max_files_total_bytes: the data bytes all captured
	// files may take together; used is what they took so far.
	budget, used int64
	// charge takes a file's data bytes from the store's room, under
	// retention's rule (coreStream.charge); false: no room.
	charge      func(n int64) bool
	withEnviron bool
	// readNetwork reads files on FUSE and network filesystems too.
	readNetwork bool
	// timeout is collect.capture_timeout, and deadline when it ends for
	// this capture.
	timeout  time.Duration
	deadline time.Time
	// light keeps the /proc texts and the JVM's error log only: the core
	// of a rate-limited crash is not kept, so neither are the files a
	// debugger would need for it.
	light bool
	// meta keeps no file: a duplicate's bundle is its metadata, and what
	// that and its title need is read (the command line, the namespace
	// pid, the executable's name, a JVM's error log, the end of stderr).
	meta bool
	// signal is the crash's: a JVM's fatal error handler writes its log,
	// then aborts.
	signal int

	// mu guards what follows against the helper, which reads it once the
	// capture ended or was abandoned. The capture goroutine reads the
	// crasher's files without it and takes it for every change to the
	// record and every write into the bundle, which it makes only while
	// the capture is not abandoned: an abandoned capture changes nothing.
	mu        sync.Mutex
	abandoned bool
	// left names, in order, what the capture has still to read (its head
	// is being read now); queue is the mapped files not reached yet.
	left  []string
	queue []mappedFile
	// current is the index in files of the file being copied, or -1.
	current int
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
	network  map[string]int  // a file not read for its filesystem → index
	auxv     []byte
	mounts   map[int]string // mount id → filesystem type, the crasher's
	missing  []string
	done     chan struct{}
}

type fileKey struct{ dev, ino uint64 }

// mapping is one file-backed address range of the crasher.
type mapping struct {
	start, end uint64
	file       int // index in capture.files
}

// mappedFile is one entry of /proc/PID/map_files.
type mappedFile struct {
	start, end   uint64
	link, target string
}

// Steps of a capture, for the record of what an abandoned one missed.
const (
	stepExe     = "the executable"
	stepMapped  = "the mapped files"
	stepLinkMap = "the loader's link map (/proc/PID/mem)"
	stepHsErr   = "the JVM's hs_err log, if any"
	stepStderr  = "the crasher's stderr file, if any"
)

// update runs fn under mu unless the capture was abandoned, and reports
// whether it ran.
func (c *capture) update(fn func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.abandoned {
		return false
	}
	fn()
	return true
}

// step marks the head of left as done.
func (c *capture) step() {
	c.update(func() {
		if len(c.left) > 0 {
			c.left = c.left[1:]
		}
	})
}

func (c *capture) warn(format string, args ...any) {
	c.update(func() { c.warnings = append(c.warnings, fmt.Sprintf(format, args...)) })
}

// start runs the capture in its own goroutine for c.timeout (0: no
// bound); wait ends it.
func (c *capture) start() {
	c.done = make(chan struct{})
	c.current = -1
	if c.timeout > 0 {
		c.deadline = time.Now().Add(c.timeout)
	}
	go func() {
		defer close(c.done)
		c.run()
	}()
}

// wait returns once the capture is done, or at its deadline with the
// capture abandoned: what it had not read is recorded as missing (missing,
// files skipped with the reason, a warning), and it changes nothing after.
func (c *capture) wait() {
	if !c.deadline.IsZero() {
		t := time.NewTimer(time.Until(c.deadline))
		defer t.Stop()
		select {
		case <-c.done:
			return
		case <-t.C:
		}
	} else {
		<-c.done
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.done: // it finished as the timer fired
		return
	default:
	}
	timeout := c.timeout
	c.abandoned = true
	reason := fmt.Sprintf("not read within collect.capture_timeout (%s): its filesystem did not answer", timeout)
	if c.current >= 0 {
		c.files[c.current].Skipped, c.files[c.current].Stored = reason, ""
		c.missing = append(c.missing, c.files[c.current].Path)
	}
	for _, step := range c.left {
		if step != stepMapped {
			c.missing = append(c.missing, step)
			continue
		}
		named := map[string]bool{}
		for _, f := range c.files {
			named[f.RawPath()] = true
		}
		for _, q := range c.queue {
			if named[q.target] {
				continue
			}
			named[q.target] = true
			text, raw := bundle.Text([]byte(q.target))
			c.files = append(c.files, bundle.File{Path: text, PathRaw: raw, Role: "mapped",
				Skipped: fmt.Sprintf("not captured within collect.capture_timeout (%s)", timeout)})
			c.missing = append(c.missing, text)
		}
	}
	c.warnings = append(c.warnings, fmt.Sprintf("capture stopped at collect.capture_timeout (%s): a read of the crashed process's files or memory did not return; not captured: %s", timeout, strings.Join(c.missing, ", ")))
}

// liveWalk starts live, analysis.Live or LiveStack (the frame-pointer
// walk through the crasher's memory, named from its mapped files), and
// returns the wait for its result, bounded by timeout from the start (0:
// none): those reads can block for ever like the capture's, so it runs in
// a goroutine that is abandoned at the timeout. ok is false then, and the
// result names the crash by its executable's name alone.
func liveWalk(pid int, signal string, live func() analysis.Result, timeout time.Duration) (wait func() (r analysis.Result, ok bool)) {
	done := make(chan analysis.Result, 1)
	go func() { done <- live() }()
	var expired <-chan time.Time
	stop := func() bool { return false }
	if timeout > 0 {
		t := time.NewTimer(timeout)
		expired, stop = t.C, t.Stop
	}
	return func() (r analysis.Result, ok bool) {
		defer stop()
		select {
		case r := <-done:
			return r, true
		case <-expired:
		}
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
			r.ExeID = filepath.Base(target)
		}
		r.Reason = "the frame-pointer walk did not finish within collect.capture_timeout: a read of the crashed process's memory or files did not return"
		r.Title = analysis.Title(signal, nil)
		r.Signature = analysis.Signature(r.ExeID, signal, nil)
		return r, false
	}
}

// stallReader reads the kernel's core pipe and gives up when nothing
// arrives for stall (0: never). The kernel's dump itself can block for
// ever: it reads the first page of every readable file mapping to tell
// ELF files apart, and every page it dumps of a file mapping, and on a
// FUSE file whose server never answers that read never returns. Without
// the bound the helper would wait on the pipe for ever, holding its
// collection slot; with it the bundle is published with the core cut and
// a warning. Once stalled it stays so: the dump will not resume in time.
type stallReader struct {
	f     *os.File
	stall time.Duration
	err   error
}

// errStalled is wrapped by the error a stalled pipe returns.
var errStalled = errors.New("stalled")

func (r *stallReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if err := r.wait(); err != nil {
		return 0, err
	}
	return r.f.Read(p)
}

// wait returns once the pipe has something to read (or its writer is
// gone), or the stall error: readers of a non-blocking pipe call it on
// EAGAIN instead of spinning.
func (r *stallReader) wait() error {
	ms := -1
	if r.stall > 0 {
		ms = int(r.stall.Milliseconds())
	}
	fds := []unix.PollFd{{Fd: int32(r.f.Fd()), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err == nil && n == 0 {
			r.err = fmt.Errorf("the kernel sent no core bytes for %s (collect.capture_timeout): %w; its dump is blocked, likely on a file the process mapped from a FUSE or network filesystem, and the pipe is let go", r.stall, errStalled)
			return r.err
		}
		return nil
	}
}

// run captures everything it can; each failure becomes a warning in the
// bundle rather than an error, because a bundle with a core and half its
// files beats no bundle.
func (c *capture) run() {
	c.update(func() {
		c.stored = map[string]bool{}
		c.seen = map[fileKey]int{}
		c.network = map[string]int{}
		c.left = nil
		if !c.meta {
			c.left = append(c.procTexts(), stepExe)
		}
		if !c.light && !c.meta {
			c.left = append(c.left, stepMapped, stepLinkMap)
		}
		c.left = append(c.left, stepHsErr, stepStderr)
	})
	switch {
	case c.meta:
		c.captureMeta()
	case c.light:
		c.captureTexts()
		if target, err := os.Readlink(filepath.Join(c.proc, "exe")); err == nil {
			c.update(func() { c.exe = []byte(target) })
		}
		c.step()
	default:
		c.captureTexts()
		c.captureExe()
		c.step()
		c.captureMapped()
		c.step()
		c.resolveAliases()
		c.step()
	}
	c.captureHsErr()
	c.step()
	c.captureStderr()
	c.step()
}

// captureMeta reads what a metadata-only bundle says of the process: its
// command line, namespace pid (unless the request gave it) and
// executable's name.
func (c *capture) captureMeta() {
	cmdline, err := proc.ReadFile(filepath.Join(c.proc, "cmdline"))
	if err != nil {
		c.warn("read cmdline: %v", err)
	}
	ns := c.nsPID
	if ns == 0 {
		status, _ := proc.ReadFile(filepath.Join(c.proc, "status"))
		ns = nsPID(status)
	}
	target, _ := os.Readlink(filepath.Join(c.proc, "exe"))
	c.update(func() {
		c.cmdline, c.nsPID = cmdlineArgs(cmdline), ns
		if target != "" {
			c.exe = []byte(target)
		}
	})
}

func (c *capture) procTexts() []string {
	names := bundle.ProcTexts
	if c.withEnviron {
		names = append(names[:len(names):len(names)], bundle.EnvironText)
	}
	var out []string
	for _, name := range names {
		out = append(out, bundle.ProcDir+"/"+name)
	}
	return out
}

func (c *capture) captureTexts() {
	for _, stored := range c.procTexts() {
		name := path.Base(stored)
		data, err := proc.ReadFile(filepath.Join(c.proc, name))
		if err != nil {
			c.warn("read %s: %v", name, err)
			c.step()
			continue
		}
		if err := c.put(stored, bytes.NewReader(data)); err != nil {
			c.warn("store %s: %v", name, err)
		}
		c.update(func() {
			switch name {
			case "cmdline":
				c.cmdline = cmdlineArgs(data)
			case "status":
				c.nsPID = nsPID(data)
			case "auxv":
				c.auxv = data
			case "mountinfo":
				c.mounts = mountTypes(data)
			}
		})
		c.step()
	}
}

// cmdlineArgs splits /proc/PID/cmdline into its arguments, as text.
func cmdlineArgs(data []byte) []string {
	var args []string
	for _, a := range bytes.Split(bytes.TrimSuffix(data, []byte{0}), []byte{0}) {
		s, _ := bundle.Text(a)
		args = append(args, s)
	}
	return args
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

// put stores r in the bundle as name, unless the capture was abandoned.
func (c *capture) put(name string, r io.Reader) error {
	return put(c.Create, name, r)
}

// errAbandoned is what a write of an abandoned capture returns.
var errAbandoned = errors.New("the capture was abandoned at collect.capture_timeout")

// Create starts a bundle file whose writes stop once the capture is
// abandoned.
func (c *capture) Create(name string) (io.WriteCloser, error) {
	if c.meta {
		return nopCloser{io.Discard}, nil // read for the title, not kept
	}
	var f io.WriteCloser
	err := errAbandoned
	c.update(func() { f, err = c.w.Create(name) })
	if err != nil {
		return nil, err
	}
	return &guarded{c: c, f: f}, nil
}

// guarded is a bundle file written by the capture goroutine: each write
// happens under the capture's lock, and none after it was abandoned, so an
// abandoned capture whose read returns late cannot write into a published
// bundle.
type guarded struct {
	c *capture
	f io.WriteCloser
}

func (g *guarded) Write(p []byte) (n int, err error) {
	err = errAbandoned
	g.c.update(func() { n, err = g.f.Write(p) })
	return n, err
}

// Seek and Truncate are there when the store's file has them (a file
// store's), so that copies stay sparse.
func (g *guarded) Seek(off int64, whence int) (n int64, err error) {
	s, ok := g.f.(io.Seeker)
	if !ok {
		return 0, errors.ErrUnsupported
	}
	err = errAbandoned
	g.c.update(func() { n, err = s.Seek(off, whence) })
	return n, err
}

func (g *guarded) Truncate(size int64) (err error) {
	t, ok := g.f.(interface{ Truncate(int64) error })
	if !ok {
		return errors.ErrUnsupported
	}
	err = errAbandoned
	g.c.update(func() { err = t.Truncate(size) })
	return err
}

// Close closes the file whether or not the capture was abandoned; an
// abandoned file's record says it was not captured.
func (g *guarded) Close() error {
	g.c.mu.Lock()
	defer g.c.mu.Unlock()
	return g.f.Close()
}

// creator starts a bundle's files (store.Writer's Create).
type creator interface {
	Create(name string) (io.WriteCloser, error)
}

// heldFiles keeps a refused crash's capture (its /proc texts, a JVM's
// error log, the end of its stderr: the light capture, small) in memory,
// so that the kernel can let the process go as soon as what only the
// process gives is read; writeTo puts it into the bundle afterwards.
type heldFiles struct {
	mu    sync.Mutex
	names []string
	data  []*bytes.Buffer
}

func (h *heldFiles) Create(name string) (io.WriteCloser, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	b := &bytes.Buffer{}
	h.names, h.data = append(h.names, name), append(h.data, b)
	return heldFile{h, b}, nil
}

// writeTo writes the files held into w, in the order they were created.
func (h *heldFiles) writeTo(w creator) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, name := range h.names {
		if err := put(w.Create, name, bytes.NewReader(h.data[i].Bytes())); err != nil {
			return fmt.Errorf("store %s: %w", name, err)
		}
	}
	return nil
}

// heldFile is one file of heldFiles; its writes take the set's lock.
type heldFile struct {
	h *heldFiles
	b *bytes.Buffer
}

func (f heldFile) Write(p []byte) (int, error) {
	f.h.mu.Lock()
	defer f.h.mu.Unlock()
	return f.b.Write(p)
}

func (heldFile) Close() error { return nil }

// nopCloser is a file of a capture that keeps none (meta).
type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// put stores r in a bundle as the file name that create starts: the
// capture's (Create) or, for what the helper adds once the capture is over
// (the container's log), the store writer's.
func put(create func(string) (io.WriteCloser, error), name string, r io.Reader) error {
	f, err := create(name)
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
	c.update(func() { c.exe = []byte(target) })
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
	// Listed first (procfs only: nothing here waits on a filesystem), so
	// that an abandoned capture can name the files it did not reach.
	var queue []mappedFile
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
		queue = append(queue, mappedFile{start, end, link, target})
	}
	c.update(func() { c.queue = queue })
	for len(queue) > 0 {
		q := queue[0]
		if i := c.captureFile(q.link, q.target, "mapped"); i >= 0 {
			c.update(func() { c.mappings = append(c.mappings, mapping{start: q.start, end: q.end, file: i}) })
		}
		queue = queue[1:]
		c.update(func() { c.queue = queue })
	}
	c.update(func() {
		sort.Slice(c.mappings, func(a, b int) bool { return c.mappings[a].start < c.mappings[b].start })
	})
}

// captureFile copies the inode behind a magic link (exe or map_files) into
// the bundle once, and returns its index in c.files, or -1 when the link
// names no regular file (or the capture was abandoned).
func (c *capture) captureFile(link, target, role string) int {
	if fs := c.networkFS(link); fs != "" && !c.readNetwork {
		return c.skipNetwork(target, role, fs)
	}
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
	name := target
	deleted := false
	if st.Nlink == 0 {
		if n, ok := strings.CutSuffix(target, " (deleted)"); ok {
			name, deleted = n, true
		}
	}
	text, raw := bundle.Text([]byte(name))
	i, copying := -1, false
	var rec bundle.File
	var stored string
	c.update(func() {
		if j, ok := c.seen[key]; ok {
			i = j
			return
		}
		rec = bundle.File{Path: text, PathRaw: raw, Size: st.Size, Role: role, Deleted: deleted}
		if deleted {
			rec.AddAlias(target)
		}
		i = len(c.files)
		c.seen[key] = i
		defer func() { c.files = append(c.files, rec) }()
		if st.Size > c.maxFileBytes {
			rec.Skipped = fmt.Sprintf("larger than collect.max_file_bytes (%d bytes)", c.maxFileBytes)
			return
		}
		var err error
		if stored, err = bundle.StoredName(name); err != nil {
			rec.Skipped = err.Error()
			return
		}
		if c.stored[stored] {
			// Two inodes under one name (a library replaced while
			// mapped): keep both, the second beside the first.
			stored = fmt.Sprintf("%s.inode-%d", stored, st.Ino)
		}
		c.current, copying = i, true
	})
	if !copying {
		return i
	}
	err := c.copyFile(link, stored, &rec)
	if err != nil && !errors.Is(err, errNoRoom) && !errors.Is(err, errAbandoned) {
		c.warn("capture %q: %v", text, err)
	}
	c.update(func() {
		c.current = -1
		if err != nil {
			rec.Skipped = err.Error()
		} else {
			c.stored[stored] = true
			rec.Stored = stored
		}
		c.files[i] = rec
	})
	return i
}

// networkFS returns the type of the filesystem a magic link's file is on
// when it is FUSE or a network filesystem, and "" otherwise. It asks
// neither that filesystem nor its server: the link is opened O_PATH (no
// open reaches the filesystem), the descriptor's mount id is read from
// /proc/self/fdinfo, and the crasher's own mountinfo gives that mount's
// type. (statfs would name the filesystem by its magic number, but on FUSE
// it is a request to the server, which is what must not be waited on.)
func (c *capture) networkFS(link string) string {
	fd, err := unix.Open(link, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return ""
	}
	defer unix.Close(fd)
	return c.fdNetworkFS(fd)
}

// fdNetworkFS is networkFS for an open descriptor.
func (c *capture) fdNetworkFS(fd int) string {
	info, err := proc.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(line, "mnt_id:"); ok {
			id, _ := strconv.Atoi(strings.TrimSpace(v))
			if fs := c.mountTypes()[id]; isNetworkFS(fs) {
				return fs
			}
		}
	}
	return ""
}

// mountTypes is the crasher's mount types, read here when the capture did
// not keep its mountinfo (a metadata-only one): a file's mount must be
// known before it is touched.
func (c *capture) mountTypes() map[int]string {
	if c.mounts == nil {
		data, _ := proc.ReadFile(filepath.Join(c.proc, "mountinfo"))
		mounts := mountTypes(data)
		c.update(func() { c.mounts = mounts })
	}
	return c.mounts
}

// networkFSTypes are filesystems whose reads wait on a server that may
// never answer: a FUSE daemon (in the container itself, possibly hostile)
// or a host across the network.
var networkFSTypes = []string{"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "afs", "coda", "lustre", "glusterfs", "virtiofs", "orangefs", "ncpfs"}

func isNetworkFS(fs string) bool {
	return fs == "fuse" || fs == "fuseblk" || strings.HasPrefix(fs, "fuse.") || slices.Contains(networkFSTypes, fs)
}

// mountTypes maps mount ids to filesystem types from a mountinfo text
// ("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw").
func mountTypes(mountinfo []byte) map[int]string {
	out := map[int]string{}
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) == 0 || sep < 0 || sep+1 >= len(f) {
			continue
		}
		if id, err := strconv.Atoi(f[0]); err == nil {
			out[id] = f[sep+1]
		}
	}
	return out
}

// skipNetwork records a file on a FUSE or network filesystem as not read,
// once per name.
func (c *capture) skipNetwork(target, role, fs string) int {
	text, raw := bundle.Text([]byte(target))
	i := -1
	c.update(func() {
		if j, ok := c.network[target]; ok {
			i = j
			return
		}
		i = len(c.files)
		c.network[target] = i
		c.files = append(c.files, bundle.File{Path: text, PathRaw: raw, Role: role,
			Skipped: fmt.Sprintf("on a %s filesystem, whose server can stall a read for ever: not read (collect.read_network_files)", fs)})
	})
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
		return fmt.Errorf("%w: its %d data bytes do not fit in the store's room under retention.max_use/keep_free, even with every older bundle deleted", errNoRoom, cost)
	}
	c.used += cost
	f.BuildID = analysis.BuildID(src)
	dst, err := c.Create(name)
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
	if c.meta && c.signal != int(unix.SIGABRT) {
		// A JVM that wrote the log dies of SIGABRT (it aborts for its
		// core): a duplicate's title is not worth a look into a working
		// directory, which may be on a hung filesystem, for a log that
		// cannot be there.
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
	if fs := c.fdNetworkFS(cwd); fs != "" && !c.readNetwork {
		c.warn("the working directory is on a %s filesystem: %s not looked for (collect.read_network_files)", fs, name)
		return
	}
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
	c.update(func() { c.hsErr = head.Bytes() })
}

// captureStderr keeps the end of the crasher's standard error when it is
// a regular file the crasher's user owns. /proc/PID/fd/2 opens the file
// the process holds, not a path; stat first, so that a device or a fifo
// is never opened.
func (c *capture) captureStderr() {
	link := filepath.Join(c.proc, "fd", "2")
	if c.logTail <= 0 {
		return
	}
	// The link's text names what the descriptor is without touching it: a
	// pipe or a socket (a container runtime's, mostly) is no file to read.
	if target, err := os.Readlink(link); err != nil || !filepath.IsAbs(target) {
		return
	}
	if fs := c.networkFS(link); fs != "" && !c.readNetwork {
		c.warn("the crasher's stderr is a file on a %s filesystem: not read (collect.read_network_files)", fs)
		return
	}
	var st, owner unix.Stat_t
	if unix.Stat(link, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || unix.Stat(c.proc, &owner) != nil ||
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
	c.update(func() { c.stderr = data })
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
