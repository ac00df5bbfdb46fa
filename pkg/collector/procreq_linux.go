package collector

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/proc"
)

// procRequest completes from the live process what the kernel's pattern
// specifiers say of a crash when no pattern passes them: the coredump
// socket has no % specifiers. The pid, thread, signal and time come from
// the eBPF event (tid and signal 0 when there is none), and with it the
// namespace pid and the thread's name; the rest from the live process,
// which the kernel holds while it waits on the socket. A kernel that
// answers PIDFD_GET_INFO (6.13+) gives the ids in one call; otherwise, or
// without the event's facts, they are read from /proc/PID/status, a text
// the kernel builds of some forty lines.
func procRequest(req Request) (Request, error) {
	r := Request{PID: req.PID, TID: req.TID, Signal: req.Signal, Time: req.Time.Truncate(time.Second).UTC(),
		RlimitCore: -1, Dumpable: 1, NSPID: req.NSPID, Comm: req.Comm, CommExact: req.CommExact}
	dir := fmt.Sprintf("/proc/%d", r.PID)
	euid, ok := -1, false
	if r.NSPID > 0 && r.CommExact {
		r.UID, r.GID, euid, ok = pidfdCreds(r.PID)
	}
	if !ok {
		status, err := proc.ReadFile(dir + "/status")
		if err != nil {
			return r, fmt.Errorf("read the crashed process %d: %w", r.PID, err)
		}
		r.NSPID = nsPID(status)
		for _, line := range strings.Split(string(status), "\n") {
			k, v, _ := strings.Cut(line, ":")
			f := strings.Fields(v)
			switch {
			case k == "Uid" && len(f) > 1:
				r.UID, _ = strconv.Atoi(f[0])
				euid, _ = strconv.Atoi(f[1])
			case k == "Gid" && len(f) > 0:
				r.GID, _ = strconv.Atoi(f[0])
			case k == "Name" && len(f) > 0 && !r.CommExact:
				r.Comm = []byte(strings.TrimSpace(v))
			}
		}
	}
	// /proc/PID belongs to root when the process is not dumpable (setuid,
	// PR_SET_DUMPABLE 0): the kernel dumps it only with suid_dumpable 2.
	var st syscall.Stat_t
	if syscall.Stat(dir, &st) == nil && euid > 0 && int(st.Uid) != euid {
		r.Dumpable = 2
	}
	r.RlimitCore = rlimitCore(r.PID, dir)
	return r, nil
}

// pidfdCreds returns pid's real uid and gid and its effective uid, from
// PIDFD_GET_INFO on a pidfd of it (ok false: the kernel cannot say).
func pidfdCreds(pid int) (uid, gid, euid int, ok bool) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return 0, 0, 0, false
	}
	defer unix.Close(fd)
	info := unix.PidfdInfo{Mask: unix.PIDFD_INFO_CREDS}
	if err := unix.IoctlPidfdInfo(fd, &info); err != nil || info.Mask&unix.PIDFD_INFO_CREDS == 0 || int(info.Tgid) != pid {
		return 0, 0, 0, false
	}
	return int(info.Ruid), int(info.Rgid), int(info.Euid), true
}

// rlimitCore is the crashed process's RLIMIT_CORE soft limit (-1:
// unlimited or unknown): prlimit asks the kernel in one call (root may ask
// of any process), /proc/PID/limits, a text of every limit, otherwise.
func rlimitCore(pid int, dir string) int64 {
	var lim unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_CORE, nil, &lim); err == nil {
		if lim.Cur == unix.RLIM_INFINITY || lim.Cur > math.MaxInt64 {
			return -1
		}
		return int64(lim.Cur)
	}
	limits, err := proc.ReadFile(dir + "/limits")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(limits), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max core file size"); ok {
			if f := strings.Fields(rest); len(f) > 0 && f[0] != "unlimited" {
				n, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return n
				}
			}
		}
	}
	return -1
}

// refusedExitWait bounds how long a refused crash's collection waits for
// its process to be gone before it writes the bundle.
const refusedExitWait = time.Second

// exitOf opens a pidfd of pid, while the kernel holds it; the returned
// function waits up to d for the process to exit (a pidfd becomes
// readable then), in the runtime's poller (a blocking poll would hold one
// of the agent's threads), and returns at once when pid could not be
// opened.
func exitOf(pid int) func(d time.Duration) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return func(time.Duration) {}
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	return func(d time.Duration) {
		defer f.Close()
		rc, err := f.SyscallConn()
		if err != nil {
			return
		}
		f.SetReadDeadline(time.Now().Add(d))
		rc.Read(func(fd uintptr) bool {
			n, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
			return n > 0
		})
	}
}
