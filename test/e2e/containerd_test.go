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
	config    string    // the config file
	cmd       *exec.Cmd // the running containerd, nil while stopped
	log       *os.File
}

// containerdConfig keeps containerd to what `ctr run --rootfs` needs: no
// CRI plugin (it would want CNI and an image). Configs are formats whose
// one argument is containerd's directory.
const containerdConfig = `disabled_plugins = ["io.containerd.grpc.v1.cri"]
`

// startContainerd starts containerd with config (see containerdConfig) and
// waits until it answers. The test's cleanup stops it, kills the shims it
// left, and removes its directory, and the shims' socket directory and the
// parent cgroups of its containers if they are new.
func startContainerd(t *testing.T, config string) *containerd {
	t.Helper()
	for _, tool := range []string{"containerd", "ctr", "runc", "busybox", "ldd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run make deps", tool)
		}
	}
	outside := []string{"/run/containerd/s", "/run/containerd"}
	for _, root := range cgroupRoots() {
		outside = append(outside, filepath.Join(root, "default"), filepath.Join(root, "kubepods"))
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
	c := &containerd{dir: dir, addr: filepath.Join(dir, "sock"), config: filepath.Join(dir, "config.toml")}
	// The opt plugin would otherwise make /opt/containerd.
	cfg := fmt.Sprintf("version = 2\n"+config+"[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"%[1]s/opt\"\n", dir)
	if err := os.WriteFile(c.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if c.log, err = os.Create(filepath.Join(dir, "containerd.log")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.stop()
		c.log.Close()
		if t.Failed() {
			log, _ := os.ReadFile(c.log.Name())
			t.Logf("containerd's log:\n%s", log)
		}
		// Shims outlive containerd; a test's own cleanup should have
		// deleted their tasks, this is for when it could not.
		for _, pid := range pidsWithArgs("-address", c.addr) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		// They leave their sockets behind.
		addrs, _ := filepath.Glob(filepath.Join(dir, "state", "io.containerd.runtime.v2.task", "*", "*", "address"))
		for _, a := range addrs {
			data, _ := os.ReadFile(a)
			os.Remove(strings.TrimPrefix(strings.TrimSpace(string(data)), "unix://"))
		}
		harness.UnmountUnder(dir)
		os.RemoveAll(dir)
		for _, p := range created {
			rmdirs(p) // only empty directories: never what others still use
		}
	})
	if err := c.start(); err != nil {
		t.Fatal(err)
	}
	return c
}

// start runs containerd on its root, state and socket (again, after stop)
// and waits until it answers.
func (c *containerd) start() error {
	cmd := exec.Command("containerd", "--config", c.config, "--root", filepath.Join(c.dir, "root"),
		"--state", filepath.Join(c.dir, "state"), "--address", c.addr)
	cmd.Stdout, cmd.Stderr = c.log, c.log
	if err := cmd.Start(); err != nil {
		return err
	}
	c.cmd = cmd
	if err := within(20*time.Second, func() error { _, err := c.try("version"); return err }); err != nil {
		return fmt.Errorf("containerd did not answer within 20s: %v", err)
	}
	return nil
}

// within calls f until it succeeds, for at most d, and returns its last
// error.
func within(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends containerd, if it runs, and waits for it; its shims and their
// containers go on.
func (c *containerd) stop() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() { c.cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-exited
	}
	c.cmd = nil
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
		thawCgroup(filepath.Join("default", id))
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

// cgroupRoots lists the mounted cgroup hierarchies: every v1 controller's
// and the v2 one, at /sys/fs/cgroup/unified on hybrid hosts or at
// /sys/fs/cgroup itself.
func cgroupRoots() []string {
	procs, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err == nil {
		procs = append(procs, "/sys/fs/cgroup/cgroup.procs")
	}
	var roots []string
	for _, p := range procs {
		roots = append(roots, filepath.Dir(p))
	}
	return roots
}

// thawCgroup thaws the cgroup at path (relative to the hierarchies' roots)
// in v2 and in the v1 freezer, wherever it exists.
func thawCgroup(path string) {
	for _, v2 := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		os.WriteFile(filepath.Join(v2, path, "cgroup.freeze"), []byte("0"), 0o644)
	}
	os.WriteFile(filepath.Join("/sys/fs/cgroup/freezer", path, "freezer.state"), []byte("THAWED"), 0o644)
}

// clearCgroup removes the cgroup at path and those below it from every
// hierarchy, after thawing it and killing whatever still runs there.
func clearCgroup(path string) {
	thawCgroup(path)
	for _, root := range cgroupRoots() {
		filepath.WalkDir(filepath.Join(root, path), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Name() == "cgroup.procs" {
				data, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(data)) {
					pid, _ := strconv.Atoi(f)
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			return nil
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, root := range cgroupRoots() {
		dir := filepath.Join(root, path)
		for rmdirs(dir) != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // the killed are not reaped yet
		}
	}
}

// rmdirs removes dir and the directories below it, deepest first, if they
// hold nothing else (which in cgroupfs means no process), and says why
// when dir remains.
func rmdirs(dir string) error {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	for _, e := range entries {
		if e.IsDir() {
			rmdirs(filepath.Join(dir, e.Name()))
		}
	}
	if err := syscall.Rmdir(dir); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("rmdir %s: %w", dir, err)
	}
	return nil
}

// pidsWithArgs returns the processes whose command line has flag followed
// by value.
func pidsWithArgs(flag, value string) []int {
	var pids []int
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		data, _ := os.ReadFile(p)
		if strings.Contains("\x00"+string(data), "\x00"+flag+"\x00"+value+"\x00") {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			pids = append(pids, pid)
		}
	}
	return pids
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

// releaseFifo writes a line into fifo once a reader waits on it (a
// container's shell that holds its crash until the test is ready), by
// deadline.
func releaseFifo(t *testing.T, fifo string, deadline time.Time) {
	t.Helper()
	for {
		f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			f.WriteString("go\n")
			f.Close()
			return
		}
		if !errors.Is(err, syscall.ENXIO) || time.Now().After(deadline) {
			t.Fatalf("no shell waits on %s: %v", fifo, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
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
	c := startContainerd(t, containerdConfig)

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
	releaseFifo(t, fifo, deadline)
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
