package agent

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	// hostCgroupNS is the host's cgroup namespace: the agent runs with
	// hostPID, so PID 1 is the host's init.
	hostCgroupNS = "/proc/1/ns/cgroup"
	// initCgroupNSInode is the inode of the kernel's initial cgroup
	// namespace (PROC_CGROUP_INIT_INO): an agent in it has nothing to join,
	// and needs no access to PID 1.
	initCgroupNSInode = 0xEFFFFFFB
)

// JoinHostCgroupNamespace re-executes the agent in the host's cgroup
// namespace when it started in another one, as a container that is not
// privileged does on a cgroup v2 node: there /proc/PID/cgroup shows other
// containers' cgroups relative to the agent's own, so neither the freezer
// nor the identity of a crash could name them. setns changes only the
// calling thread, and exec from that thread carries it to the whole new
// process. It returns only when no join was needed, or on an error.
func JoinHostCgroupNamespace() error {
	self, err := os.Stat("/proc/self/ns/cgroup")
	if err != nil {
		return fmt.Errorf("read this process's cgroup namespace: %w", err)
	}
	if st, ok := self.Sys().(*syscall.Stat_t); ok && st.Ino == initCgroupNSInode {
		return nil
	}
	host, err := os.Stat(hostCgroupNS)
	if err != nil {
		return fmt.Errorf("read the host's cgroup namespace %s: %w (run the pod with hostPID and CAP_SYS_PTRACE)", hostCgroupNS, err)
	}
	if os.SameFile(self, host) {
		return nil
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, err := unix.Open(hostCgroupNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open the host's cgroup namespace: %w (run the pod with hostPID and CAP_SYS_PTRACE)", err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWCGROUP); err != nil {
		return fmt.Errorf("join the host's cgroup namespace: %w (the pod needs CAP_SYS_ADMIN, or privileged)", err)
	}
	return syscall.Exec("/proc/self/exe", os.Args, os.Environ())
}

// inHostMountNamespace runs f on a thread of its own in the host's mount
// namespace (PID 1's), when this process is in another one (a pod); it
// fails without running f when it is not: the kernel takes
// a coredump socket's pattern only from a task in its initial mount
// namespace, and resolves the socket's path there. The thread gets its own
// filesystem context first (setns refuses a mount namespace to a thread
// sharing it with others) and ends with f, never to run Go code again.
func inHostMountNamespace(f func() error) error {
	self, err1 := os.Stat("/proc/self/ns/mnt")
	host, err2 := os.Stat("/proc/1/ns/mnt")
	if err1 != nil || err2 != nil || os.SameFile(self, host) {
		return errors.New("already in PID 1's mount namespace")
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		fd, err := unix.Open("/proc/1/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- fmt.Errorf("open the host's mount namespace: %w (run the pod with hostPID and CAP_SYS_PTRACE)", err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			done <- fmt.Errorf("unshare the filesystem context: %w", err)
			return
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNS); err != nil {
			done <- fmt.Errorf("join the host's mount namespace: %w (the pod needs CAP_SYS_ADMIN and CAP_SYS_CHROOT, or privileged)", err)
			return
		}
		done <- f()
	}()
	return <-done
}
