package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/test/harness"
)

// freezeHier is one cgroup hierarchy a test container can live in.
type freezeHier struct {
	name, root string
	// frozen reads whether the cgroup at dir is frozen.
	frozen func(dir string) bool
}

// freezeHiers lists the v2 hierarchy and, where mounted, the v1 freezer.
func freezeHiers(t *testing.T) []freezeHier {
	v2 := ""
	for _, dir := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err == nil {
			v2 = dir
			break
		}
	}
	hs := []freezeHier{{name: "v2", root: v2, frozen: func(dir string) bool {
		data, _ := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		return strings.Contains(string(data), "frozen 1")
	}}}
	if _, err := os.Stat("/sys/fs/cgroup/freezer"); err == nil {
		hs = append(hs, freezeHier{name: "v1", root: "/sys/fs/cgroup/freezer", frozen: func(dir string) bool {
			data, _ := os.ReadFile(filepath.Join(dir, "freezer.state"))
			return strings.TrimSpace(string(data)) == "FROZEN"
		}})
	}
	return hs
}

// freezeContainer makes a container-like cgroup /<ns>/<id> (containerd's
// form, which the freezer's default policy allows) with a sibling process
// in it, and returns the cgroup path, its directory and the sibling.
func freezeContainer(t *testing.T, h freezeHier) (string, string, *exec.Cmd) {
	t.Helper()
	ns := fmt.Sprintf("cce2e%d", os.Getpid())
	path := "/" + ns + "/c1"
	dir := filepath.Join(h.root, ns, "c1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sibling := exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec sleep 600`, dir)
	if err := sibling.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Never leave anything frozen, whatever happened.
		os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0o644)
		os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0o644)
		sibling.Process.Kill()
		sibling.Wait()
		deadline := time.Now().Add(5 * time.Second)
		for os.Remove(dir) != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		os.Remove(filepath.Dir(dir))
	})
	return path, dir, sibling
}

// crashInto starts a multi-threaded crasher with a 1.5 GB core in the
// cgroup dir and returns it running; it has not crashed when this returns
// only if the dump is slower than the start.
func crashInto(t *testing.T, n *harness.Node, dir string) *exec.Cmd {
	t.Helper()
	exe := harness.CC(t, n.Dir, "lim_mem_threads", []string{"lim_mem.c", "idle_threads.c"}, "-O2", "-pthread")
	cmd := exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$1" 1536 fill`, dir, exe)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// checkFrozenCrash watches the container's cgroup until the crasher is gone
// (done), and checks that it was frozen meanwhile and is thawed now, and
// that the crasher's bundle has a freeze section and metadata naming the
// container's cgroup (path), not the holding cgroup. It returns the bundle.
func checkFrozenCrash(t *testing.T, n *harness.Node, h freezeHier, dir, path string, pid int, done <-chan struct{}) *bundle.Metadata {
	t.Helper()
	sawFrozen := false
	timeout := time.After(2 * time.Minute)
wait:
	for {
		select {
		case <-done:
			break wait
		case <-timeout:
			t.Fatalf("the crasher %d still runs after 2 minutes", pid)
		case <-time.After(2 * time.Millisecond):
			sawFrozen = sawFrozen || h.frozen(dir)
		}
	}
	if !sawFrozen {
		t.Errorf("the container's cgroup %s was never seen frozen while the core streamed", dir)
	}
	m := n.WaitBundle(pid)
	f := m.Freeze
	if f == nil || !f.Frozen || f.Cgroup != path || f.LatencyMS <= 0 || f.DurationMS <= 0 {
		t.Fatalf("freeze section %+v, want frozen %s with a latency and a duration", f, path)
	}
	t.Logf("signal to frozen %.2f ms, frozen for %.0f ms", f.LatencyMS, f.DurationMS)
	if m.Cgroup != path {
		t.Errorf("metadata cgroup %q, want the container's %q (not the holding cgroup)", m.Cgroup, path)
	}
	if h.frozen(dir) {
		t.Errorf("the container is still frozen after its bundle was published")
	}
	return m
}

// TestAgentFreeze runs the agent and crashes a multi-threaded process with
// a 1.5 GB core in a container cgroup holding a sibling, in v2 and v1: the
// sibling is frozen while the core streams, runs again afterwards, and the
// core is whole and debuggable. The bundle's freeze section says so.
func TestAgentFreeze(t *testing.T) {
	for _, h := range freezeHiers(t) {
		t.Run(h.name, func(t *testing.T) {
			socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccfreeze-%d.sock", os.Getpid()))
			n := harness.Install(t, "socket: "+socket+"\n")
			a := startAgent(t, n, socket)
			path, dir, sibling := freezeContainer(t, h)
			crasher := crashInto(t, n, dir)
			done := make(chan struct{})
			go func() {
				crasher.Wait()
				close(done)
			}()
			m := checkFrozenCrash(t, n, h, dir, path, crasher.Process.Pid, done)
			if err := sibling.Process.Signal(syscall.Signal(0)); err != nil {
				t.Errorf("the sibling is gone: %v", err)
			}
			checkWholeCore(t, m)
			checkDebuggable(t, n, m, "crash_here")
			a.waitLine(t, "thawed the crasher's container")
		})
	}
}

// TestAgentThawsUndumpedCrash crashes a non-dumpable process of 1 GiB in
// a container cgroup holding a sibling: the kernel dumps nothing, so no
// collection ever lets the crasher go, and the agent thaws the container
// once the crasher is gone, not at freeze.max (30 s).
func TestAgentThawsUndumpedCrash(t *testing.T) {
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccfreeze-%d.sock", os.Getpid()))
	n := harness.Install(t, "socket: "+socket+"\n")
	a := startAgent(t, n, socket)
	h := freezeHiers(t)[0]
	_, dir, sibling := freezeContainer(t, h)
	exe := harness.CC(t, n.Dir, "nodump", []string{"nodump.c"})
	crasher := exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$1" 1024`, dir, exe)
	if err := crasher.Run(); err == nil {
		t.Fatal("nodump exited without its crash")
	}
	a.waitLine(t, "the crashed process exited")
	if h.frozen(dir) {
		t.Errorf("the container is still frozen after its crasher, which the kernel did not dump, was gone")
	}
	if err := sibling.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the sibling is gone: %v", err)
	}
}

// TestAgentKilledMidFreeze kills the agent with SIGKILL while a container
// is frozen: the next agent thaws the container within 2 s of its start,
// and the crash has a bundle (the agent collected the core the helper
// handed over, so it died with the agent: the next agent records the
// crash the killed one was waiting for).
func TestAgentKilledMidFreeze(t *testing.T) {
	h := freezeHiers(t)[0]
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("cckill-%d.sock", os.Getpid()))
	n := harness.Install(t, "socket: "+socket+"\nintake: pipe\nobserver:\n  missing_after: 2s\n")
	a := startAgent(t, n, socket)
	_, dir, _ := freezeContainer(t, h)
	crasher := crashInto(t, n, dir)
	deadline := time.Now().Add(20 * time.Second)
	for !h.frozen(dir) {
		if time.Now().After(deadline) {
			t.Fatal("the container never froze")
		}
		time.Sleep(2 * time.Millisecond)
	}
	a.cmd.Process.Kill()
	a.cmd.Wait()
	crasher.Wait()
	if !h.frozen(dir) {
		t.Fatalf("the container thawed without an agent: the test could not kill the agent mid-freeze")
	}
	start := time.Now()
	startAgent(t, n, socket)
	for h.frozen(dir) {
		if time.Since(start) > 2*time.Second {
			t.Fatalf("the container is still frozen 2s after the agent started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("thawed %v after the agent's start", time.Since(start).Round(time.Millisecond))
	m := n.WaitBundle(crasher.Process.Pid)
	t.Logf("the crash's bundle: core %+v", m.Core)
	if entries, _ := os.ReadDir(spool.Open(n.Spool).Frozen()); len(entries) > 0 {
		t.Errorf("freeze records left: %v", entries)
	}
}
