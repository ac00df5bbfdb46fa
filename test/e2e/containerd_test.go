package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/test/harness"
)

// containerd is a containerd of the test's own: its root, state and socket
// live in a short temporary directory (a unix socket path has at most 107
// bytes), so it neither needs nor disturbs a system containerd.
type containerd struct {
	dir, addr string
}

// containerdConfig keeps containerd to what `ctr run --rootfs` needs: no
// CRI plugin (it would want CNI and an image), /opt left alone.
const containerdConfig = `version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`

// startContainerd starts containerd and waits until it answers; the test's
// cleanup stops it and removes its directory, and the shims' socket
// directory and the namespace's parent cgroups if they are new and empty.
func startContainerd(t *testing.T) *containerd {
	t.Helper()
	for _, tool := range []string{"containerd", "ctr", "runc", "busybox", "ldd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run make deps", tool)
		}
	}
	outside := []string{"/run/containerd/s", "/run/containerd", "/sys/fs/cgroup/default"}
	procs, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	for _, p := range procs {
		outside = append(outside, filepath.Join(filepath.Dir(p), "default"))
	}
	var created []string
	for _, p := range outside {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			created = append(created, p)
		}
	}
	dir, err := os.MkdirTemp("", "ccd")
	if err != nil {
		t.Fatal(err)
	}
	c := &containerd{dir: dir, addr: filepath.Join(dir, "sock")}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(containerdConfig, filepath.Join(dir, "opt"))), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("containerd", "--config", cfg, "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--address", c.addr)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
		if t.Failed() {
			log, _ := os.ReadFile(logFile.Name())
			t.Logf("containerd's log:\n%s", log)
		}
		os.RemoveAll(dir)
		for _, p := range created {
			os.Remove(p) // only if empty: never what others still use
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := c.try("version")
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer within 20s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// try runs ctr against this containerd and returns its combined output.
func (c *containerd) try(args ...string) (string, error) {
	out, err := exec.Command("ctr", append([]string{"--address", c.addr}, args...)...).CombinedOutput()
	return string(out), err
}

// run starts a container of rootfs in containerd's default namespace, with
// its cgroup at /default/<id>, running script with /bin/sh. The test's
// cleanup thaws it, kills it and deletes it, whatever happened.
func (c *containerd) run(t *testing.T, rootfs, id, script string) {
	t.Helper()
	t.Cleanup(func() {
		// Never leave anything frozen; a frozen task cannot be killed.
		for _, v2 := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
			os.WriteFile(filepath.Join(v2, "default", id, "cgroup.freeze"), []byte("0"), 0o644)
		}
		os.WriteFile(filepath.Join("/sys/fs/cgroup/freezer/default", id, "freezer.state"), []byte("THAWED"), 0o644)
		c.try("task", "kill", "--signal", "SIGKILL", id)
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, err := c.try("task", "delete", "--force", id)
			if err == nil || strings.Contains(out, "not found") || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if out, err := c.try("container", "delete", id); err != nil {
			t.Errorf("delete container %s: %v\n%s", id, err, out)
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(c.dir, id+".log"))
			t.Logf("container %s's output:\n%s", id, log)
		}
	})
	out, err := c.try("run", "-d", "--rootfs", "--runc-root", filepath.Join(c.dir, "runc"),
		"--log-uri", "file://"+filepath.Join(c.dir, id+".log"), rootfs, id, "/bin/sh", "-c", script)
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
}

// busyboxRoot makes a root filesystem of static busybox (/bin/sh,
// /bin/sleep) and returns its directory.
func busyboxRoot(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, "/bin/busybox", filepath.Join(root, "bin", "busybox"))
	for _, applet := range []string{"sh", "sleep"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// copyLibraries copies the shared libraries exe needs, as ldd lists them,
// into root at the same paths.
func copyLibraries(t *testing.T, root, exe string) {
	t.Helper()
	out, err := exec.Command("ldd", exe).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", exe, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				if err := os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755); err != nil {
					t.Fatal(err)
				}
				copyFile(t, f, filepath.Join(root, f))
				break
			}
		}
	}
}

// procsNamed returns the processes of a cgroup directory by their comm.
func procsNamed(dir string) map[string]int {
	data, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	byName := map[string]int{}
	for _, f := range strings.Fields(string(data)) {
		pid, _ := strconv.Atoi(f)
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
			byName[strings.TrimSpace(string(comm))] = pid
		}
	}
	return byName
}

// TestAgentFreezeContainerd crashes a multi-threaded process with a 1.5 GB
// core in a real containerd + runc container that also runs a sleep: the
// agent freezes the container's cgroup (/default/<id>) while the core
// streams, thaws it afterwards with the sleep still there, and the core is
// whole and debuggable from the container's executable and libraries.
func TestAgentFreezeContainerd(t *testing.T) {
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccctrd-%d.sock", os.Getpid()))
	n := harness.Install(t, "socket: "+socket+"\n")
	a := startAgent(t, n, socket)
	c := startContainerd(t)

	root := busyboxRoot(t, n.Dir)
	// Dynamic, with the container's own libc: checkDebuggable wants gdb to
	// load shared libraries from the bundle's sysroot.
	copyLibraries(t, root, harness.CC(t, root, "lim_mem", []string{"lim_mem.c", "idle_threads.c"}, "-O2", "-pthread"))
	// The crasher is not the container's init: when a pid namespace's init
	// dies, the kernel kills the rest of it, the sibling included.
	fifo := filepath.Join(root, "go")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("cce2e%d", os.Getpid())
	c.run(t, root, id, "/bin/sleep 600 & read x < /go; /lim_mem 1536 fill; wait")

	h := freezeHiers(t)[0]
	path := "/default/" + id
	dir := filepath.Join(h.root, "default", id)
	deadline := time.Now().Add(20 * time.Second)
	var sibling int
	for {
		sibling = procsNamed(dir)["sleep"]
		if sibling != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sleep in the container's cgroup %s after 20s", dir)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Everything is ready: let the container's shell start the crasher.
	for {
		f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			f.WriteString("go\n")
			f.Close()
			break
		}
		if !errors.Is(err, syscall.ENXIO) || time.Now().After(deadline) {
			t.Fatalf("the container's shell does not wait on %s: %v", fifo, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var crasher int
	for crasher == 0 {
		crasher = procsNamed(dir)["lim_mem"]
		if time.Now().After(deadline) {
			t.Fatalf("no lim_mem in the container's cgroup %s after 20s", dir)
		}
		time.Sleep(time.Millisecond)
	}
	pidfd, err := unix.PidfdOpen(crasher, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				return
			}
		}
	}()
	m := checkFrozenCrash(t, n, h, dir, path, crasher, done)
	if procsNamed(dir)["sleep"] != sibling || syscall.Kill(sibling, 0) != nil {
		t.Errorf("the sibling sleep %d is gone from the container: %v", sibling, procsNamed(dir))
	}
	checkWholeCore(t, m)
	checkDebuggable(t, n, m, "crash_here")
	a.waitLine(t, "thawed the crasher's container")
}
