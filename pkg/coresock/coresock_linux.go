// Package coresock speaks the kernel's coredump socket protocol (Linux
// 6.17+, core_pattern "@@/path", include/uapi/linux/coredump.h): the
// crashing task connects to a listening unix socket, sends a request, and
// the server's answer decides, before a byte is dumped, whether the kernel
// writes the core into the connection or dumps nothing. It knows nothing
// of bundles: the agent decides, this package carries the answer.
package coresock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/proc"
)

// The answers a server may give (enum in coredump.h). Kernel|Wait keeps a
// core and holds the crashed task until the server closes the connection;
// Reject dumps nothing.
const (
	Kernel    uint64 = 1 << 0
	Userspace uint64 = 1 << 1
	Reject    uint64 = 1 << 2
	Wait      uint64 = 1 << 3
)

// Sizes of the first published request and answer.
const (
	reqSizeVer0 = 16
	ackSizeVer0 = 16
	// reqSizeMax bounds what a (future, larger) request may claim.
	reqSizeMax = 4096
)

// markReqAck is the kernel's mark after an answer it accepted; others
// (min size, max size, unsupported, conflicting) say why it refused it.
const markReqAck = 0

// Pattern is the core_pattern that sends cores to a socket at path with the
// request step.
func Pattern(path string) string { return "@@" + path }

// Listen binds a unix socket at path, root only (directory 0700, socket
// 0600; the kernel connects with its own credentials), for the coredump
// socket and the agent's own. A stale socket is replaced. The listen
// backlog is the kernel's maximum (net.core.somaxconn): a full queue drops
// a core. The socket stays when the listener closes: a supervisor's
// listener outlives its users.
func Listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create the coredump socket's directory: %w", err)
	}
	if conn, err := net.DialTimeout("unix", path, 100*time.Millisecond); err == nil {
		conn.Close()
		return nil, fmt.Errorf("another process listens on %s: stop it first", path)
	}
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Request is what the kernel sends first: the answer sizes and modes it
// supports.
type Request struct {
	Size, SizeAck uint32
	Mask          uint64
}

// Conn is one crash's connection.
type Conn struct {
	*net.UnixConn
	// PID is the crashed process (SO_PEERCRED, the initial pid namespace),
	// checked against its pidfd: /proc/PID is that process for as long as
	// the kernel holds it.
	PID     int
	Request Request
}

// Open reads who connected and its request, within timeout. A connection
// from anything but a crashing task (no request) is an error.
func Open(c *net.UnixConn, timeout time.Duration) (*Conn, error) {
	conn := &Conn{UnixConn: c}
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	pidfd := -1
	var credErr error
	raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr == nil {
			pidfd, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
		}
	})
	if credErr != nil {
		return nil, fmt.Errorf("the coredump connection's peer: %w", credErr)
	}
	conn.PID = int(cred.Pid)
	if pidfd > 0 {
		// The pidfd names the crasher itself; its pid must be the one
		// the credentials give, or the pid was reused (it cannot be while
		// the kernel holds the task, but a stranger's connect could race).
		pid, err := pidfdPID(pidfd)
		unix.Close(pidfd)
		if err != nil {
			return nil, fmt.Errorf("the coredump connection's pidfd: %w", err)
		}
		if pid != conn.PID {
			return nil, fmt.Errorf("the coredump connection's pidfd names pid %d, its credentials %d", pid, conn.PID)
		}
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	var head [reqSizeVer0]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		return nil, fmt.Errorf("read the kernel's coredump request from pid %d: %w", conn.PID, err)
	}
	bo := binary.NativeEndian
	conn.Request = Request{Size: bo.Uint32(head[0:]), SizeAck: bo.Uint32(head[4:]), Mask: bo.Uint64(head[8:])}
	if conn.Request.Size < reqSizeVer0 || conn.Request.Size > reqSizeMax {
		return nil, fmt.Errorf("a coredump request of %d bytes: not the kernel's", conn.Request.Size)
	}
	if extra := int64(conn.Request.Size) - reqSizeVer0; extra > 0 {
		if _, err := io.CopyN(io.Discard, c, extra); err != nil {
			return nil, fmt.Errorf("read the kernel's coredump request: %w", err)
		}
	}
	return conn, nil
}

// pidfdPID returns the pid a pidfd names (-1 once the process is gone):
// PIDFD_GET_INFO (Linux 6.13) asks the kernel in one call, while the kernel
// holds the crasher; older kernels say it in the pidfd's fdinfo.
func pidfdPID(pidfd int) (int, error) {
	info := unix.PidfdInfo{Mask: unix.PIDFD_INFO_PID}
	err := unix.IoctlPidfdInfo(pidfd, &info)
	switch {
	case err == nil:
		return int(info.Pid), nil
	case errors.Is(err, unix.ESRCH):
		return -1, nil
	}
	data, err := proc.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", pidfd))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, errors.New("no Pid in the pidfd's fdinfo")
}

// Answer sends mask and reads the kernel's mark. After Kernel the core
// follows on the connection until EOF; after Reject nothing does.
func (c *Conn) Answer(mask uint64) error {
	if c.Request.Mask&mask != mask {
		return fmt.Errorf("the kernel supports coredump answers %#x, not %#x", c.Request.Mask, mask)
	}
	size := uint32(ackSizeVer0)
	if c.Request.SizeAck != 0 && c.Request.SizeAck < size {
		size = c.Request.SizeAck
	}
	ack := make([]byte, size)
	binary.NativeEndian.PutUint32(ack[0:], size)
	binary.NativeEndian.PutUint64(ack[8:], mask)
	if _, err := c.Write(ack); err != nil {
		return fmt.Errorf("answer the kernel's coredump request: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var mark [4]byte
	if _, err := io.ReadFull(c, mark[:]); err != nil {
		if mask&Reject != 0 {
			return nil // nothing follows a refusal; the kernel may just close
		}
		return fmt.Errorf("read the kernel's mark: %w", err)
	}
	if m := binary.NativeEndian.Uint32(mark[:]); m != markReqAck {
		return fmt.Errorf("the kernel refused the coredump answer %#x (mark %d)", mask, m)
	}
	return nil
}

// File returns the connection as a file, for the collector's reader; the
// file is a dup: close both.
func (c *Conn) File() (*os.File, error) { return c.UnixConn.File() }
