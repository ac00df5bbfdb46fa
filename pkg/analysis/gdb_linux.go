package analysis

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// GDB bounds a full unwind: gdb reads the whole core and can take seconds
// and gigabytes on a big one, on a node that is busy running workloads.
type GDB struct {
	// Path is gdb's name or path.
	Path string
	// Timeout, CPU and Memory bound gdb's wall time, CPU time and address
	// space; it runs at the lowest CPU priority.
	Timeout time.Duration
	Memory  int64
	// MaxThreads is the most threads unwound one by one; beyond, only the
	// crashed thread is.
	MaxThreads int
	// DebuginfodURLs, when set, are the debuginfod servers gdb fetches
	// missing debug info from by build-id, each file at most
	// DebuginfodMaxBytes, into DebuginfodCache, all within Timeout.
	DebuginfodURLs     string
	DebuginfodCache    string
	DebuginfodMaxBytes int64
	// UID and GID are the unprivileged user gdb runs as, when the agent
	// runs as root: gdb parses the crashed container's ELF, DWARF and core.
	UID, GID uint32
}

// ErrNoGDB means gdb is not installed: the frame-pointer walk stands.
var ErrNoGDB = errors.New("gdb is not installed")

// Unwound is what gdb's unwind of a core found.
type Unwound struct {
	// Frames are the crashed thread's, Threads every thread's when
	// there are at most MaxThreads.
	Frames  []bundle.Frame
	Threads []bundle.Thread
	// Script is the interpreted program's stack (Python's, from the
	// interpreter's gdb helpers when they are installed).
	Script []bundle.Frame
	// Warnings says which frames are unnamed because their file could not
	// be read within the analysis limits.
	Warnings []string
}

// Unwind runs gdb in batch mode on a bundle materialized in dir (dir/core,
// dir/sysroot, the executable under it) and returns what it found.
// Module, offset and build-id of each frame come from the bundle's own
// maps and files; function, file and line from gdb.
func (g GDB) Unwind(ctx context.Context, dir string, m *bundle.Metadata, threads int) (Unwound, error) {
	path, err := exec.LookPath(g.Path)
	if err != nil {
		return Unwound{}, fmt.Errorf("%w (%v)", ErrNoGDB, err)
	}
	exe := m.ExePath()
	if exe == "" {
		return Unwound{}, errors.New("no executable in the bundle")
	}
	// gdb reads the bundle as its own group, through a directory handed
	// to it open (fd 3): the spool above stays root's alone.
	root, err := handOver(dir, g.GID)
	if err != nil {
		return Unwound{}, err
	}
	defer root.Close()
	files := []*os.File{root}
	const fd = "/proc/self/fd/3"
	ctx, cancel := context.WithTimeout(ctx, g.Timeout)
	defer cancel()
	debuginfod := "off"
	if g.DebuginfodURLs != "" {
		debuginfod = "on"
	}
	args := []string{"-nx", "-batch", "-q",
		"-iex", "set sysroot " + filepath.Join(fd, bundle.SysrootDir),
		"-iex", "set debuginfod enabled " + debuginfod,
		"-iex", "set auto-load no",
		"-ex", "set pagination off", "-ex", "set print frame-arguments none", "-ex", "set width 0",
		"-ex", "echo @@crashed\\n", "-ex", "p/x $pc", "-ex", "bt 64"}
	if script := interpreterHelpers(m); script != "" {
		// The agent's own installed helpers (auto-load stays off: the
		// bundle's files are the crasher's).
		args = append(args, "-ex", "source "+script, "-ex", "echo @@script\\n", "-ex", "py-bt")
	}
	if threads <= g.MaxThreads {
		args = append(args, "-ex", "echo @@threads\\n", "-ex", "thread apply all -q p/x $pc",
			"-ex", "echo @@all\\n", "-ex", "thread apply all bt 64")
	}
	args = append(args, filepath.Join(fd, exe), filepath.Join(fd, "core"))
	cmd := exec.CommandContext(ctx, path, args...)
	if prlimit, err := exec.LookPath("prlimit"); err == nil {
		// Bound what gdb may take. SCHED_IDLE and the idle I/O class keep
		// it behind everything else: the workloads, and the agent's own
		// freezing of the next crasher's container, which nice 19 alone
		// delayed by up to 20 ms on two busy CPUs.
		cmd = exec.CommandContext(ctx, prlimit, append([]string{fmt.Sprintf("--as=%d", g.Memory),
			fmt.Sprintf("--cpu=%d", int(g.Timeout.Seconds())+1), "--", "chrt", "--idle", "0", "ionice", "-c", "3", path}, args...)...)
	}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "LC_ALL=C"}
	if g.DebuginfodURLs != "" {
		// The cache is gdb's user's, handed over as fd 4 like the bundle.
		cache, err := cacheFor(g.DebuginfodCache, g.UID, g.GID)
		if err != nil {
			return Unwound{}, err
		}
		defer cache.Close()
		files = append(files, cache)
		// libdebuginfod's own bounds: a download's time and size.
		cmd.Env = append(cmd.Env, "DEBUGINFOD_URLS="+g.DebuginfodURLs, "DEBUGINFOD_CACHE_PATH=/proc/self/fd/4",
			fmt.Sprintf("DEBUGINFOD_MAXTIME=%d", max(int(g.Timeout.Seconds())/2, 1)),
			fmt.Sprintf("DEBUGINFOD_MAXSIZE=%d", g.DebuginfodMaxBytes))
	}
	cmd.WaitDelay = time.Second
	cmd.ExtraFiles = files
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err = startUnprivileged(cmd, g.UID, g.GID); err == nil {
		err = cmd.Wait()
	}
	out := stdout.Bytes()
	if ctx.Err() != nil {
		return Unwound{}, fmt.Errorf("gdb took longer than %v", g.Timeout)
	}
	if err != nil && len(out) == 0 {
		return Unwound{}, fmt.Errorf("gdb: %w", err)
	}
	maps, _ := os.ReadFile(filepath.Join(dir, bundle.ProcDir, "maps"))
	sym := NewSymbolizer(ParseMaps(maps), func(mp Mapping) (io.ReaderAt, io.Closer, error) {
		f, err := os.Open(filepath.Join(dir, bundle.SysrootDir, filepath.Clean("/"+mp.Path)))
		return f, f, err
	})
	u := parseGDB(out, sym)
	if len(u.Frames) == 0 {
		return Unwound{}, errors.New("gdb printed no frames")
	}
	u.Warnings = sym.Warnings()
	return u, nil
}

// gdbAutoLoad is where Debian's packages put the gdb helpers of the
// programs they ship, at each program's path: python3.11-dbg's
// /usr/share/gdb/auto-load/usr/bin/python3.11-gdb.py is libpython.py,
// whose py-bt prints a Python process's stack.
const gdbAutoLoad = "/usr/share/gdb/auto-load"

// interpreterHelpers returns the gdb helper script installed where the
// agent runs for the bundle's interpreter (its executable or a libpython
// it mapped), or "" without one.
func interpreterHelpers(m *bundle.Metadata) string {
	for _, f := range m.Files {
		if f.Role != "exe" && !strings.Contains(filepath.Base(f.Path), "libpython") {
			continue
		}
		script := filepath.Join(gdbAutoLoad, filepath.Clean("/"+f.Path)+"-gdb.py")
		if st, err := os.Stat(script); err == nil && st.Mode().IsRegular() {
			return script
		}
	}
	return ""
}

var (
	// pyFrame is a frame of py-bt: `  File "/app/main.py", line 3, in read_name`.
	pyFrame   = regexp.MustCompile(`^File "(.*)", line (\d+), in (.+)$`)
	gdbFrame  = regexp.MustCompile(`^#(\d+)\s+(?:0x([0-9a-f]+) in )?(.+?) \(.*?\)(?: at (.+):(\d+))?(?: from (\S+))?$`)
	gdbThread = regexp.MustCompile(`^Thread \d+ \(.*?LWP (\d+)`)
	gdbPC     = regexp.MustCompile(`^\$\d+ = 0x([0-9a-f]+)`)
)

// parseGDB reads the output of the commands Unwind runs: the crashed
// thread's pc and backtrace, its Python stack, then every thread's pc and
// backtrace.
func parseGDB(out []byte, sym *Symbolizer) Unwound {
	var crashed, script []bundle.Frame
	var threads []bundle.Thread
	var pcs []uint64 // each thread's pc, in the order gdb walks them
	// Each frame gdb printed, with the thread it belongs to (-1: the
	// crashed one), named in one pass once all are read.
	type place struct {
		thread int
		gdb    bundle.Frame
	}
	var places []place
	var look []Lookup
	section, pc, prev := "", uint64(0), uint64(0)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "@@") {
			section = line
			continue
		}
		if section == "@@script" {
			if m := pyFrame.FindStringSubmatch(line); m != nil {
				n, _ := strconv.Atoi(m[2])
				script = append(script, bundle.Frame{Function: m[3], File: m[1], Line: n, Module: "python"})
			}
			continue
		}
		if m := gdbPC.FindStringSubmatch(line); m != nil {
			v, _ := strconv.ParseUint(m[1], 16, 64)
			if section == "@@threads" {
				pcs = append(pcs, v)
			} else {
				pc = v
			}
			continue
		}
		if m := gdbThread.FindStringSubmatch(line); m != nil {
			if section == "@@all" {
				id, _ := strconv.Atoi(m[1])
				threads = append(threads, bundle.Thread{ID: id})
				if len(threads) <= len(pcs) {
					pc = pcs[len(threads)-1]
				}
			}
			continue
		}
		m := gdbFrame.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		p := place{thread: -1}
		switch {
		case section == "@@crashed":
		case section == "@@all" && len(threads) > 0:
			p.thread = len(threads) - 1
		default:
			continue
		}
		n, _ := strconv.Atoi(m[1])
		addr := pc
		switch {
		case m[2] != "":
			addr, _ = strconv.ParseUint(m[2], 16, 64)
		case n > 0:
			// A function the previous frame was inlined into: gdb
			// prints no address, it is the previous frame's.
			addr = prev
		}
		prev = addr
		if m[3] != "??" {
			p.gdb.Function = m[3]
		}
		if m[4] != "" {
			p.gdb.File = m[4]
			p.gdb.Line, _ = strconv.Atoi(m[5])
		}
		places = append(places, p)
		look = append(look, Lookup{Addr: addr, Ret: n > 0})
	}
	for i, f := range sym.Frames(look) {
		p := places[i]
		if p.gdb.Function != "" {
			f.Function = p.gdb.Function
		}
		f.File, f.Line = p.gdb.File, p.gdb.Line
		if p.thread < 0 {
			crashed = append(crashed, f)
		} else {
			threads[p.thread].Frames = append(threads[p.thread].Frames, f)
		}
	}
	return Unwound{Frames: crashed, Threads: threads, Script: script}
}
