package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/corecatch/corecatch/pkg/agent"
	"github.com/corecatch/corecatch/pkg/collector"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/sysctl"
	"github.com/corecatch/corecatch/test/harness"
)

// simNode is the node's name the simulated pod gets from spec.nodeName.
const simNode = "sim-node-1"

// podSim is the chart's agent container run as a process on this machine:
// its host paths mapped into a test directory through the chart's values,
// and the kernel's sysctls the real ones.
type podSim struct {
	dir     string   // the test directory
	args    []string // the container's args, as kubelet expands them
	socket  string
	spool   string
	hostBin string // the helper, as the kernel sees it
	config  string // the ConfigMap's config.yaml, where args name it
	store   string
}

// renderPod renders the chart with the host paths in dir (short: the
// core_pattern that names them has 127 bytes), writes the ConfigMap where
// the container mounts it, and returns how to run the agent container.
func renderPod(t *testing.T, dir string, sets ...string) *podSim {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	// The pod's mount of host.binDir: a link stands for the bind mount,
	// so the agent writes through one path and the kernel runs the other.
	hostBinDir, podBinDir := filepath.Join(dir, "b"), filepath.Join(dir, "pod-bin")
	if err := os.Mkdir(hostBinDir, 0o755); err != nil { // hostPath DirectoryOrCreate
		t.Fatal(err)
	}
	if err := os.Symlink(hostBinDir, podBinDir); err != nil {
		t.Fatal(err)
	}
	m, err := harness.DecodeManifests(harness.RenderChart(t, append([]string{
		"--set", "host.dataDir=" + filepath.Join(dir, "d"),
		"--set", "host.runDir=" + filepath.Join(dir, "r"),
		"--set", "host.binDir=" + hostBinDir,
		"--set", "criSocket=" + filepath.Join(dir, "cri.sock"),
		"--set", "metrics.port=" + strconv.Itoa(port),
		// Where the container finds what the host's mounts would give it:
		// the bin directory's link, and the real sysctls.
		"--set", "config.host.bin_mount=" + podBinDir,
		"--set", "config.host.proc_sys_kernel=" + sysctl.Proc,
	}, sets...)...))
	if err != nil {
		t.Fatal(err)
	}
	ds, cm := m.DaemonSet(), m.ConfigMap("corecatch")
	if ds == nil || cm == nil || len(ds.Spec.Template.Spec.Containers) != 1 {
		t.Fatal("the chart renders no DaemonSet with one container, or no ConfigMap corecatch")
	}
	c := ds.Spec.Template.Spec.Containers[0]
	var cfgMount string
	for _, vm := range c.VolumeMounts {
		if v := harness.Volume(&ds.Spec.Template.Spec, vm.Name); v != nil && v.ConfigMap != nil && v.ConfigMap.Name == cm.Name {
			cfgMount = vm.MountPath
		}
	}
	if cfgMount == "" {
		t.Fatal("the container does not mount the ConfigMap")
	}
	// The ConfigMap volume, in the test directory.
	pod := &podSim{dir: dir, socket: filepath.Join(dir, "r", "agent.sock"), spool: filepath.Join(dir, "d", "spool"),
		store: filepath.Join(dir, "d", "bundles"), hostBin: filepath.Join(hostBinDir, sysctl.HelperName),
		config: filepath.Join(dir, cfgMount, "config.yaml")}
	if err := os.MkdirAll(filepath.Dir(pod.config), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pod.config, []byte(cm.Data["config.yaml"]), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			env[e.Name] = simNode
		}
	}
	for _, a := range c.Args {
		// kubelet expands $(VAR) from the container's environment.
		for k, v := range env {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		a = strings.Replace(a, "="+cfgMount+"/", "="+filepath.Join(dir, cfgMount)+"/", 1)
		pod.args = append(pod.args, a)
	}
	return pod
}

// start runs the agent container as a process.
func (p *podSim) start(t *testing.T) *agentProc {
	t.Helper()
	return runAgent(t, exec.Command(harness.Binary(t), p.args...), p.socket)
}

// savedSysctls reads what the agent will restore.
func (p *podSim) savedSysctls(t *testing.T) sysctl.Saved {
	t.Helper()
	var s sysctl.Saved
	data, err := os.ReadFile(spool.Open(p.spool).SysctlState())
	if err == nil {
		err = json.Unmarshal(data, &s)
	}
	if err != nil {
		t.Fatalf("saved sysctls: %v", err)
	}
	return s
}

// TestNodeSimulation runs the chart's agent container as its pod runs it
// (its args, its ConfigMap, spec.nodeName, a private cgroup namespace), with
// the chart's host paths in a test directory and the real sysctls: the
// helper lands at the host path and the kernel runs it from there; the
// agent, SIGKILLed, leaves a pattern that still works, and its successor
// repairs the node over a helper that is running; SIGTERM puts back the
// original sysctls byte for byte and removes the helper.
func TestNodeSimulation(t *testing.T) {
	harness.Privileged(t)
	dir := harness.TempDir(t, "ccn")
	// Originals no install would write: a plain file pattern with trailing
	// spaces, and a pipe limit of 0 that the agent raises.
	writeKernel(t, "core_pattern", "core-sim.%e.%p  ")
	writeKernel(t, "core_pipe_limit", "0")
	origPattern, origLimit := readKernel(t, "core_pattern"), readKernel(t, "core_pipe_limit")
	// The pipe intake: a killed agent's crashes still reach the helper
	// (with the socket intake they find no listener; see the README).
	pod := renderPod(t, dir, "--set", "config.intake=pipe")
	node := harness.Attach(t, dir, pod.config, pod.store, pod.spool)
	exe := buildSignals(t, dir)

	a := pod.start(t)
	wantPattern := fmt.Sprintf("|%s collect -c %s %s\n", pod.hostBin, spool.Open(pod.spool).HelperConfig(), collector.PatternArgs)
	if got := readKernel(t, "core_pattern"); got != wantPattern {
		t.Fatalf("core_pattern %q, want %q (the helper at its host path)", got, wantPattern)
	}
	if got := readKernel(t, "core_pipe_limit"); got != strconv.Itoa(sysctl.PipeLimit)+"\n" {
		t.Errorf("core_pipe_limit %q, want %d", got, sysctl.PipeLimit)
	}
	// The helper's snapshot, which an SRE's uninstall on the node reads
	// too, holds the host's view.
	snap, err := config.Load(spool.Open(pod.spool).HelperConfig(), true)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Host.BinDir != filepath.Dir(pod.hostBin) || snap.Host.BinMount != "" || snap.Host.ProcSysKernel != sysctl.Proc || snap.Node != simNode {
		t.Errorf("the helper's snapshot has host %+v, node %q: want the host's paths and %s", snap.Host, snap.Node, simNode)
	}
	installed, err := os.ReadFile(pod.hostBin)
	if err != nil {
		t.Fatal(err)
	}
	if own, _ := os.ReadFile(harness.Binary(t)); !bytes.Equal(installed, own) {
		t.Errorf("%s is not the agent's binary", pod.hostBin)
	}
	cmd := exec.Command(exe, "segv")
	node.Crash(cmd)
	m := node.WaitBundle(cmd.Process.Pid)
	if m.Node != simNode {
		t.Errorf("bundle node %q, want %q from spec.nodeName", m.Node, simNode)
	}
	a.waitLine(t, "crash collected", m.ID)

	// Killed without a chance to restore: the pattern stays, and the
	// helper it names still collects.
	a.cmd.Process.Kill()
	a.cmd.Wait()
	if got := readKernel(t, "core_pattern"); got != wantPattern {
		t.Fatalf("core_pattern %q after SIGKILL, want it left as it was", got)
	}
	cmd = exec.Command(exe, "abrt")
	node.Crash(cmd)
	node.WaitBundle(cmd.Process.Pid)

	// A process runs the installed helper while the next agent replaces
	// it, as the kernel's helper may during an upgrade.
	busy := exec.Command(pod.hostBin, "--config", pod.config, "--spool", filepath.Join(dir, "busy"), "feishu-bridge", "--listen", "127.0.0.1:0", "--token-file", writeToken(t, dir))
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { busy.Process.Kill(); busy.Wait() }()
	before, err := os.Stat(pod.hostBin)
	if err != nil {
		t.Fatal(err)
	}

	a = pod.start(t)
	a.waitLine(t, "repaired")
	if got := readKernel(t, "core_pattern"); got != wantPattern {
		t.Errorf("core_pattern %q after the restart, want %q", got, wantPattern)
	}
	if s := pod.savedSysctls(t); string(s.CorePattern) != origPattern || string(s.CorePipeLimit) != origLimit {
		t.Errorf("after the restart the saved sysctls are %q, %q; want the originals %q, %q", s.CorePattern, s.CorePipeLimit, origPattern, origLimit)
	}
	if after, err := os.Stat(pod.hostBin); err != nil || os.SameFile(before, after) {
		t.Errorf("the restarted agent did not replace the helper (%v)", err)
	}
	if err := busy.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the process running the old helper died: %v", err)
	}
	cmd = exec.Command(exe, "segv")
	node.Crash(cmd)
	a.waitLine(t, "crash collected", node.WaitBundle(cmd.Process.Pid).ID)
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid)); err == nil {
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "VmHWM:") {
				t.Logf("agent peak RSS after three crashes: %s", strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:")))
			}
		}
	}

	// A clean stop, as kubelet stops the pod (chart uninstall, node
	// shutdown; outside a cluster no DaemonSet lives on).
	a.cmd.Process.Signal(syscall.SIGTERM)
	if err := a.cmd.Wait(); err != nil {
		t.Errorf("agent exit after SIGTERM: %v", err)
	}
	if got := readKernel(t, "core_pattern"); got != origPattern {
		t.Errorf("core_pattern %q after SIGTERM, want %q byte for byte", got, origPattern)
	}
	if got := readKernel(t, "core_pipe_limit"); got != origLimit {
		t.Errorf("core_pipe_limit %q after SIGTERM, want %q byte for byte", got, origLimit)
	}
	for _, gone := range []string{pod.hostBin, spool.Open(pod.spool).SysctlState()} {
		if _, err := os.Stat(gone); !os.IsNotExist(err) {
			t.Errorf("%s is still there after SIGTERM (%v)", gone, err)
		}
	}
}

// TestAgentJoinsHostCgroupNamespace starts the agent container in a cgroup
// namespace of its own, as an unprivileged container gets on a cgroup v2
// node, and checks that it moved into PID 1's, where /proc/PID/cgroup shows
// the host's paths. This machine's init cannot be opened by tests (it holds
// capabilities they lack), so PID 1 is a shell in a PID namespace of the
// test's, itself in the test's cgroup namespace.
func TestAgentJoinsHostCgroupNamespace(t *testing.T) {
	harness.Privileged(t)
	pod := renderPod(t, harness.TempDir(t, "ccj"))
	bin := harness.Binary(t)
	// The shell stays PID 1 (the trailing command keeps it from exec'ing
	// unshare), and unshare gives the agent a new cgroup namespace.
	cmd := exec.Command("unshare", append([]string{"--pid", "--kill-child", "--mount-proc", "--",
		"sh", "-c", `unshare --cgroup -- "$0" "$@"; true`, bin}, pod.args...)...)
	a := runAgent(t, cmd, pod.socket)
	var agentPID int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		args, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		// The supervisor, not its worker (which has agent.WorkerEnv set): it
		// is the one a kubelet signals, and the one that restores.
		if exe == bin && bytes.Contains(args, []byte(pod.config)) && !bytes.Contains(env, []byte(agent.WorkerEnv+"=")) {
			agentPID = pid
		}
	}
	if agentPID == 0 {
		t.Fatal("the agent's process is not found")
	}
	self, err1 := os.Stat("/proc/self/ns/cgroup")
	got, err2 := os.Stat(fmt.Sprintf("/proc/%d/ns/cgroup", agentPID))
	if err1 != nil || err2 != nil || !os.SameFile(self, got) {
		t.Errorf("the agent is not in PID 1's cgroup namespace (%v, %v)", err1, err2)
	}
	syscall.Kill(agentPID, syscall.SIGTERM)
	a.waitLine(t, "restored")
}
