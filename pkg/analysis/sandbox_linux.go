package analysis

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// gdb parses what the crashed container wrote: its executable, libraries,
// DWARF and core. The agent runs it as an unprivileged user, without
// capabilities and unable to gain any: a gdb bug exploited by a crafted
// file gets a process that can read little more than the bundle itself.

// handOver opens the materialized bundle in dir to gdb's group and no one
// else (each entry group gid, the group given the owner's read and search
// bits but not write, others nothing) and returns dir open, for gdb to reach it as /proc/self/fd/3: the
// spool above dir stays root's alone, and no path to it needs to be
// searchable by anyone else. Root stays the owner, so the agent removes
// the copy afterwards without CAP_DAC_OVERRIDE or CAP_FOWNER, which the
// chart does not grant. When the agent is not root, gdb runs as the
// agent's own user and the group is left alone.
func handOver(dir string, gid uint32) (*os.File, error) {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if os.Geteuid() == 0 {
			if err := os.Lchown(p, -1, int(gid)); err != nil {
				return err
			}
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := info.Mode().Perm()
		return os.Chmod(p, mode&0o700|mode&0o500>>3)
	})
	if err != nil {
		return nil, fmt.Errorf("open the bundle to gdb's group %d: %w", gid, err)
	}
	return os.Open(dir)
}

// startUnprivileged starts cmd as uid:gid (when the agent is root) with no
// supplementary groups, no capabilities, none left to regain (an empty
// bounding set) and no_new_privs, so that no setuid or file-capability
// binary gives any back. os/exec has no setting for the last two, and
// both are per-thread attributes a child inherits from the thread that
// forks it: cmd is started from a locked thread that drops them first and
// is never reused (it exits with its goroutine). The rest of the agent
// keeps its privileges.
func startUnprivileged(cmd *exec.Cmd, uid, gid uint32) error {
	if os.Geteuid() == 0 {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		// Changing to a non-zero uid clears the permitted, effective and
		// ambient capabilities.
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread ends here
		if err := dropPrivileges(); err != nil {
			errc <- err
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// dropPrivileges sets no_new_privs and empties the ambient and bounding
// capability sets of the calling thread.
func dropPrivileges() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs for gdb: %w", err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities for gdb: %w", err)
	}
	for c := uintptr(0); ; c++ {
		err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0)
		switch {
		case errors.Is(err, unix.EINVAL): // past the kernel's last capability
			return nil
		case errors.Is(err, unix.EPERM): // no CAP_SETPCAP: not root, nothing to drop
			return nil
		case err != nil:
			return fmt.Errorf("drop capability %d for gdb: %w", c, err)
		}
	}
}

// cacheFor returns gdb's debuginfod cache open, creating it: the directory
// is the unprivileged user's own (0700), as gdb writes there. In a pod,
// where the agent has no CAP_DAC_OVERRIDE, what gdb downloaded outlives
// the agent's cleanup of its work directory; libdebuginfod expires it.
func cacheFor(dir string, uid, gid uint32) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("debuginfod cache: %w", err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, int(uid), int(gid)); err != nil {
			return nil, fmt.Errorf("give the debuginfod cache to uid %d for gdb: %w", uid, err)
		}
	}
	return os.Open(dir)
}
