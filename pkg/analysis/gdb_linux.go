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
	// UID and GID are the unprivileged user gdb runs as, when the agent
	// runs as root: gdb parses the crashed container's ELF, DWARF and core.
	UID, GID uint32
}

// ErrNoGDB means gdb is not installed: the frame-pointer walk stands.
var ErrNoGDB = errors.New("gdb is not installed")

// Unwind runs gdb in batch mode on a bundle materialized in dir (dir/core,
// dir/sysroot, the executable under it) and returns the crashed thread's
// frames and, when there are at most MaxThreads threads, every thread's.
// Module, offset and build-id of each frame come from the bundle's own
// maps and files; function, file and line from gdb.
func (g GDB) Unwind(ctx context.Context, dir string, m *bundle.Metadata, threads int) ([]bundle.Frame, []bundle.Thread, []string, error) {
	path, err := exec.LookPath(g.Path)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w (%v)", ErrNoGDB, err)
	}
	exe := m.ExePath()
	if exe == "" {
		return nil, nil, nil, errors.New("no executable in the bundle")
	}
	// gdb reads the bundle as its own group, through a directory handed
	// to it open (fd 3): the spool above stays root's alone.
	root, err := handOver(dir, g.GID)
	if err != nil {
		return nil, nil, nil, err
	}
	defer root.Close()
	const fd = "/proc/self/fd/3"
	ctx, cancel := context.WithTimeout(ctx, g.Timeout)
	defer cancel()
	args := []string{"-nx", "-batch", "-q",
		"-iex", "set sysroot " + filepath.Join(fd, bundle.SysrootDir),
		"-iex", "set debuginfod enabled off",
		"-iex", "set auto-load no",
		"-ex", "set pagination off", "-ex", "set print frame-arguments none", "-ex", "set width 0",
		"-ex", "echo @@crashed\\n", "-ex", "p/x $pc", "-ex", "bt 64"}
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
	cmd.WaitDelay = time.Second
	cmd.ExtraFiles = []*os.File{root}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err = startUnprivileged(cmd, g.UID, g.GID); err == nil {
		err = cmd.Wait()
	}
	out := stdout.Bytes()
	if ctx.Err() != nil {
		return nil, nil, nil, fmt.Errorf("gdb took longer than %v", g.Timeout)
	}
	if err != nil && len(out) == 0 {
		return nil, nil, nil, fmt.Errorf("gdb: %w", err)
	}
	maps, _ := os.ReadFile(filepath.Join(dir, bundle.ProcDir, "maps"))
	sym := NewSymbolizer(ParseMaps(maps), func(mp Mapping) (io.ReaderAt, io.Closer, error) {
		f, err := os.Open(filepath.Join(dir, bundle.SysrootDir, filepath.Clean("/"+mp.Path)))
		return f, f, err
	})
	crashed, all := parseGDB(out, sym)
	if len(crashed) == 0 {
		return nil, nil, nil, errors.New("gdb printed no frames")
	}
	return crashed, all, sym.Warnings(), nil
}

var (
	gdbFrame  = regexp.MustCompile(`^#(\d+)\s+(?:0x([0-9a-f]+) in )?(.+?) \(.*?\)(?: at (.+):(\d+))?(?: from (\S+))?$`)
	gdbThread = regexp.MustCompile(`^Thread \d+ \(.*?LWP (\d+)`)
	gdbPC     = regexp.MustCompile(`^\$\d+ = 0x([0-9a-f]+)`)
)

// parseGDB reads the output of the commands Unwind runs: the crashed
// thread's pc and backtrace, then every thread's pc and backtrace.
func parseGDB(out []byte, sym *Symbolizer) ([]bundle.Frame, []bundle.Thread) {
	var crashed []bundle.Frame
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
	section, pc := "", uint64(0)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "@@") {
			section = line
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
		if m[2] != "" {
			addr, _ = strconv.ParseUint(m[2], 16, 64)
		}
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
	return crashed, threads
}
