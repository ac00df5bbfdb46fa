package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// hangFile is a FUSE file that answers lookups, attributes and opens, and
// whose reads never return (until the test ends): a container's FUSE
// server that stalls whoever reads it.
type hangFile struct {
	fs.Inode
	release chan struct{}
}

var (
	_ fs.NodeGetattrer = (*hangFile)(nil)
	_ fs.NodeOpener    = (*hangFile)(nil)
	_ fs.NodeReader    = (*hangFile)(nil)
)

func (f *hangFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode, out.Size = syscall.S_IFREG|0o755, 1<<20
	return 0
}

func (f *hangFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *hangFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	select {
	case <-f.release:
	case <-ctx.Done():
	}
	return nil, syscall.EIO
}

// mountHang mounts a FUSE filesystem holding one file, lib.so, whose reads
// hang, and returns the file's path and what releases the hung reads. The
// test's cleanup releases them and unmounts it, lazily if it is still busy,
// even when the test failed. The caller holds the privileged lock (a mount
// is the kernel's state).
func mountHang(t *testing.T, dir string) (string, func()) {
	t.Helper()
	mnt := filepath.Join(dir, "fuse")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	root := &fs.Inode{}
	srv, err := fs.Mount(mnt, root, &fs.Options{
		MountOptions: fuse.MountOptions{FsName: "corecatch-hang", Name: "hang"},
		OnAdd: func(ctx context.Context) {
			root.AddChild("lib.so", root.NewPersistentInode(ctx, &hangFile{release: release}, fs.StableAttr{Mode: syscall.S_IFREG}), false)
		},
	})
	if err != nil {
		t.Fatalf("mount a FUSE filesystem at %s (fusermount3 comes with Debian's fuse3): %v", mnt, err)
	}
	t.Cleanup(func() {
		unblock()
		if err := srv.Unmount(); err != nil {
			if out, err := exec.Command("fusermount3", "-u", "-z", mnt).CombinedOutput(); err != nil {
				t.Errorf("unmount %s: %v\n%s", mnt, err, out)
			}
		}
	})
	return filepath.Join(mnt, "lib.so"), unblock
}

// TestCaptureTimeoutFUSE crashes a process that maps a file from a FUSE
// filesystem whose reads never return, as a container can: the helper
// skips the file (or, told to read such files, gives up on it at
// collect.capture_timeout), keeps the whole core, and the bundle names what
// is missing. Without the bounds the helper would hold the crasher and a
// collection slot for ever.
func TestCaptureTimeoutFUSE(t *testing.T) {
	const timeout = 3 // seconds
	crash := func(t *testing.T, extra string, args ...string) (*bundle.Metadata, string) {
		n := harness.Install(t, "collect:\n  capture_timeout: 3s\n"+extra)
		lib, _ := mountHang(t, n.Dir)
		cmd := exec.Command(harness.CC(t, n.Dir, "mapper", []string{"mapper.c"}), append([]string{"map", lib}, args...)...)
		n.Crash(cmd)
		m := n.WaitBundle(cmd.Process.Pid)
		checkWholeCore(t, m)
		return m, lib
	}
	t.Run("skipped", func(t *testing.T) {
		m, lib := crash(t, "")
		f := fileWhere(m, func(f *bundle.File) bool { return f.Path == lib })
		if f == nil || f.Stored != "" || !strings.Contains(f.Skipped, "fuse.hang") || !strings.Contains(f.Skipped, "collect.read_network_files") {
			t.Errorf("file on FUSE: %+v; want it skipped for its filesystem", f)
		}
		if len(m.Collector.Missing) > 0 || m.Collector.HeldSeconds >= timeout {
			t.Errorf("the helper waited on FUSE: held %.1fs, missing %q", m.Collector.HeldSeconds, m.Collector.Missing)
		}
		if fileWhere(m, func(f *bundle.File) bool { return f.Role == "exe" && f.Stored != "" }) == nil {
			t.Errorf("the executable was not captured: %+v", m.Files)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		m, lib := crash(t, "  read_network_files: true\n")
		f := fileWhere(m, func(f *bundle.File) bool { return f.Path == lib })
		if f == nil || f.Stored != "" || !strings.Contains(f.Skipped, "collect.capture_timeout") {
			t.Errorf("file on FUSE: %+v; want it skipped at the capture timeout", f)
		}
		if !slices.Contains(m.Collector.Missing, lib) {
			t.Errorf("collector.missing %q does not name %s", m.Collector.Missing, lib)
		}
		// The helper gave up at the deadline: not before (the read did
		// hang), and not long after.
		if h := m.Collector.HeldSeconds; h < timeout || h > timeout+20 {
			t.Errorf("held the crasher %.1fs; want about the %ds timeout", h, timeout)
		}
	})
	t.Run("dump", func(t *testing.T) {
		// The first page is mapped: the kernel's dump reads it, and
		// blocks. The helper gives up on the pipe and publishes what it
		// has; the crasher stays in the kernel until the server answers.
		n := harness.Install(t, "collect:\n  capture_timeout: 3s\n")
		lib, unblock := mountHang(t, n.Dir)
		cmd := exec.Command(harness.CC(t, n.Dir, "mapper", []string{"mapper.c"}), "map", lib, "head")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer unblock()
		m := n.WaitBundle(cmd.Process.Pid)
		if !m.Core.Truncated || !slices.ContainsFunc(m.Warnings, func(w string) bool { return strings.Contains(w, "no core bytes") }) {
			t.Errorf("core %+v, warnings %q; want the core cut at the stall, and said so", m.Core, m.Warnings)
		}
		if h := m.Collector.HeldSeconds; h > 2*timeout+20 {
			t.Errorf("held the pipe %.1fs; want it let go about the %ds timeout after the kernel stopped", h, timeout)
		}
	})
	t.Run("duplicate", func(t *testing.T) {
		// A refused duplicate keeps its metadata alone, yet its stderr is
		// looked at for its title: that the file is on FUSE must be
		// known before it is touched, as it was for the first crash.
		n := harness.Install(t, "collect:\n  capture_timeout: 3s\n")
		lib, _ := mountHang(t, n.Dir)
		bin := harness.CC(t, n.Dir, "mapper", []string{"mapper.c"})
		var ms []*bundle.Metadata
		for range 2 {
			stderr, err := os.OpenFile(lib, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "map", lib)
			cmd.Stderr = stderr
			n.Crash(cmd)
			stderr.Close()
			ms = append(ms, n.WaitBundle(cmd.Process.Pid))
		}
		m := ms[1]
		if m.Dedup == nil || m.Dedup.Of != ms[0].ID {
			t.Fatalf("the second crash was not refused as a duplicate of %s: dedup %+v, core %+v", ms[0].ID, m.Dedup, m.Core)
		}
		if m.Collector.HeldSeconds >= timeout || len(m.Collector.Missing) > 0 {
			t.Errorf("the duplicate's capture waited on FUSE: held %.1fs, missing %q", m.Collector.HeldSeconds, m.Collector.Missing)
		}
		for _, m := range ms {
			if !slices.ContainsFunc(m.Warnings, func(w string) bool { return strings.Contains(w, "stderr is a file on a fuse.hang") }) {
				t.Errorf("%s: warnings %q; want its stderr not read for its filesystem", m.ID, m.Warnings)
			}
		}
	})
	t.Run("walk", func(t *testing.T) {
		// The frame pointer points into the FUSE page: the helper's
		// frame-pointer walk reads it through /proc/PID/mem.
		m, _ := crash(t, "", "fp")
		if !slices.Contains(m.Collector.Missing, "the frame-pointer walk") {
			t.Errorf("collector.missing %q; want the frame-pointer walk given up at the timeout", m.Collector.Missing)
		}
		if fileWhere(m, func(f *bundle.File) bool { return f.Role == "exe" && f.Stored != "" }) == nil {
			t.Errorf("the executable was not captured after the walk was given up: %+v", m.Files)
		}
	})
}
