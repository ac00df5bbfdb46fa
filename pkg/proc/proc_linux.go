// Package proc reads the kernel's text files under /proc that a crash's
// collection reads while the kernel holds the crashed process, where
// every microsecond of CPU is a microsecond the process is held. The
// package is Linux-only.
package proc

import (
	"errors"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// firstRead is the buffer of a read's first pass: most of these files
// (status, cgroup, a small program's maps) fit in it.
const firstRead = 4 << 10

// ReadFile reads a /proc file whole, as os.ReadFile does, in fewer calls:
// os.Open offers each file to the runtime's poller (a non-blocking flag
// set and cleared, an epoll registration /proc refuses) and os.ReadFile,
// seeing a size of 0, reads a seq_file 512 bytes at a time, each read
// generating the file's text anew up to where it stopped. Errors are
// *fs.PathError, as os.ReadFile's are.
func ReadFile(name string) ([]byte, error) {
	fd, err := open(name)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 0, firstRead)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return nil, &fs.PathError{Op: "read", Path: name, Err: err}
		case n == 0:
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// Open opens a file under /proc (a process's exe, mem, map_files) for
// reading, as os.Open does, without offering it to the runtime's poller,
// which costs os.Open three system calls that /proc files refuse.
func Open(name string) (*os.File, error) {
	fd, err := open(name)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

func open(name string) (int, error) {
	for {
		fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}
