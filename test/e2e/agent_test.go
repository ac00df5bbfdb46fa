package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/agentapi"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/test/harness"
)

// agentProc is a running `corecatch agent` and the lines it logs.
type agentProc struct {
	cmd *exec.Cmd

	// all keeps every line: waitLine reads them from next on, and a
	// failed test prints them (a race seen once in twenty runs needs the
	// agent's own account). The reader never blocks, so a test that reads
	// few lines cannot stall the agent's logging.
	mu     sync.Mutex
	all    []string
	next   int
	exited bool
	more   chan struct{} // a token when lines were added
}

// agentNode installs corecatch with a socket of its own (name tells tests
// apart in /tmp) and extra top-level YAML, and starts the agent on a free
// loopback port, which it returns with the socket.
func agentNode(t *testing.T, name, extra string) (n *harness.Node, a *agentProc, socket, addr string) {
	t.Helper()
	socket = filepath.Join(os.TempDir(), fmt.Sprintf("cc%s-%d.sock", name, os.Getpid()))
	n = harness.Install(t, "socket: "+socket+"\n"+extra)
	t.Cleanup(func() { os.Remove(socket) }) // after the agent's kill, which leaves it
	addr = freeAddr(t)
	return n, startAgentListen(t, n, socket, addr), socket, addr
}

// startAgent starts the agent on the node's config and waits until its
// socket answers.
func startAgent(t *testing.T, n *harness.Node, socket string) *agentProc {
	return startAgentListen(t, n, socket, "127.0.0.1:0")
}

// startAgentListen is startAgent with the agent's HTTP address.
func startAgentListen(t *testing.T, n *harness.Node, socket, listen string) *agentProc {
	t.Helper()
	return runAgent(t, exec.Command(n.Bin, "--config", n.Config, "agent", "--listen", listen), socket)
}

// runAgent starts cmd, an agent, and waits until its socket answers.
func runAgent(t *testing.T, cmd *exec.Cmd, socket string) *agentProc {
	t.Helper()
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{cmd: cmd, more: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			a.mu.Lock()
			a.all = append(a.all, sc.Text())
			a.mu.Unlock()
			a.wake()
		}
		a.mu.Lock()
		a.exited = true
		a.mu.Unlock()
		a.wake()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			a.mu.Lock()
			t.Logf("the agent (pid %d) logged:\n%s", cmd.Process.Pid, strings.Join(a.all, "\n"))
			a.mu.Unlock()
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := agentapi.Lookup(socket, 1, 0); err != nil && strings.Contains(err.Error(), "no eBPF event") {
			return a
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the agent's socket %s did not answer within 10s", socket)
	return nil
}

// waitLine waits up to 10s for a log line that contains every one of
// parts.
func (a *agentProc) waitLine(t *testing.T, parts ...string) string {
	t.Helper()
	return a.waitLineWithin(t, 10*time.Second, parts...)
}

// waitLineWithin waits up to d for a log line that contains every one of
// parts.
func (a *agentProc) waitLineWithin(t *testing.T, d time.Duration, parts ...string) string {
	t.Helper()
	timeout := time.After(d)
	for {
		a.mu.Lock()
		for a.next < len(a.all) {
			line := a.all[a.next]
			a.next++
			match := true
			for _, p := range parts {
				match = match && strings.Contains(line, p)
			}
			if match {
				a.mu.Unlock()
				return line
			}
		}
		exited := a.exited
		a.mu.Unlock()
		if exited {
			t.Fatalf("the agent exited before logging %q", parts)
		}
		select {
		case <-a.more:
		case <-timeout:
			t.Fatalf("the agent did not log %q within %s", parts, d)
		}
	}
}

// wake tells a waiting waitLine that lines were added or the agent exited.
func (a *agentProc) wake() {
	select {
	case a.more <- struct{}{}:
	default:
	}
}

// TestAgentCorrelatesAndSurvivesRestarts runs the agent as a node would: a
// crash's bundle gets the eBPF event of its signal; with the agent killed
// (-9, its socket left behind) the helper still stores the bundle and
// spools its report, which the next agent picks up at start; SIGINT then
// restores the core_pattern that was there before.
func TestAgentCorrelatesAndSurvivesRestarts(t *testing.T) {
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccagent-%d.sock", os.Getpid()))
	// The pipe intake: with the socket's, a killed agent's crashes find
	// no listener (TestSocketIntake).
	n := harness.Install(t, "socket: "+socket+"\nintake: pipe\n")
	n.Run("uninstall") // the agent installs, and restores on exit
	before, err := os.ReadFile("/proc/sys/kernel/core_pattern")
	if err != nil {
		t.Fatal(err)
	}
	exe := buildSignals(t, n.Dir)

	a := startAgent(t, n, socket)
	cmd := exec.Command(exe, "segv")
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)
	if m.EBPF == nil {
		t.Fatalf("bundle %s has no ebpf section", m.ID)
	}
	if m.EBPF.Signal != int(syscall.SIGSEGV) || m.EBPF.SiCode != 1 || m.EBPF.FaultAddr != "0x0" || m.EBPF.CgroupID == 0 || len(m.EBPF.Stack) == 0 {
		t.Errorf("ebpf section %+v, want SIGSEGV, SEGV_MAPERR at 0x0 with a cgroup and a stack", m.EBPF)
	}
	if m.EBPF.LatencyMS <= 0 || m.EBPF.LatencyMS > 5000 {
		t.Errorf("signal to helper latency %.1f ms", m.EBPF.LatencyMS)
	}
	a.waitLine(t, "crash collected", m.ID, `"from_spool":false`)

	// Killed: the socket stays behind, so helpers spool their reports.
	a.cmd.Process.Kill()
	a.cmd.Wait()
	cmd = exec.Command(exe, "abrt")
	n.Crash(cmd)
	m = n.WaitBundle(cmd.Process.Pid)
	if m.EBPF != nil {
		t.Errorf("an ebpf section without an agent: %+v", m.EBPF)
	}
	reports := spool.Open(n.Spool).Reports()
	spooled := func() bool {
		list, _ := reports.List()
		return slices.ContainsFunc(list, func(r *bundle.Metadata) bool { return r.ID == m.ID })
	}
	deadline := time.Now().Add(5 * time.Second)
	for !spooled() {
		if time.Now().After(deadline) {
			t.Fatalf("no spooled report of %s in %s", m.ID, n.Spool)
		}
		time.Sleep(50 * time.Millisecond)
	}

	a = startAgent(t, n, socket)
	a.waitLine(t, "crash collected", m.ID, `"from_spool":true`)
	if spooled() {
		t.Error("the spooled report is still there after the agent took it")
	}
	a.cmd.Process.Signal(syscall.SIGINT)
	if err := a.cmd.Wait(); err != nil {
		t.Errorf("agent exit after SIGINT: %v", err)
	}
	if after, _ := os.ReadFile("/proc/sys/kernel/core_pattern"); string(after) != string(before) {
		t.Errorf("core_pattern %q after the agent stopped, want %q", after, before)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("the agent left its socket behind (%v)", err)
	}
}

// TestAgentRecordsMissingCore crashes a process the kernel will not dump
// (non-dumpable): no helper runs, and after observer.missing_after the
// agent records the crash as a bundle without a core, which `corecatch ls`
// lists.
func TestAgentRecordsMissingCore(t *testing.T) {
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccmiss-%d.sock", os.Getpid()))
	n := harness.Install(t, "socket: "+socket+"\nobserver:\n  missing_after: 1s\n")
	startAgent(t, n, socket)
	cmd := exec.Command(harness.CC(t, n.Dir, "nodump", []string{"nodump.c"}))
	if err := cmd.Run(); cmd.ProcessState == nil || cmd.ProcessState.Sys().(syscall.WaitStatus).CoreDump() {
		t.Fatalf("nodump: %v (%v), want a SIGSEGV death without a core", cmd.ProcessState, err)
	}
	m := n.WaitBundle(cmd.Process.Pid)
	if !m.Core.Truncated || m.Core.TruncateReason != "missing" || m.Core.StoredBytes != 0 {
		t.Errorf("core %+v, want no core, truncate_reason missing", m.Core)
	}
	if m.EBPF == nil || m.EBPF.Signal != int(syscall.SIGSEGV) || m.SignalName != "SIGSEGV" || m.Comm != "nodump" {
		t.Errorf("bundle %s: comm %q signal %s ebpf %+v", m.ID, m.Comm, m.SignalName, m.EBPF)
	}
	if out := n.Run("ls"); !strings.Contains(out, m.ID) || !strings.Contains(out, "truncated: missing") {
		t.Errorf("corecatch ls does not show the crash without a core:\n%s", out)
	}
}

// TestAgentMetrics scrapes a real agent after a real crash: the crash, its
// stored core and its signal are counted, drop reasons exist at 0, and
// /readyz answers once the helper socket listens.
func TestAgentMetrics(t *testing.T) {
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccmet-%d.sock", os.Getpid()))
	n := harness.Install(t, "socket: "+socket+"\n")
	addr := freeAddr(t)
	a := startAgentListen(t, n, socket, addr)
	get := func(path string) string { return httpGet(t, "http://"+addr+path) }
	get("/readyz")
	cmd := exec.Command(buildSignals(t, n.Dir), "segv")
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)
	a.waitLine(t, "crash collected", m.ID)
	body := get("/metrics")
	for _, want := range []string{
		`corecatch_crashes_total{container="",exe="signals",namespace="",signal="SIGSEGV",workload=""} 1`,
		`corecatch_cores_stored_total 1`,
		`corecatch_cores_dropped_total{reason="missing"} 0`,
		`corecatch_fatal_signals_total{container="",kind="core",namespace="",signal="SIGSEGV",workload=""}`,
		`corecatch_ebpf_events_lost_total 0`,
		`corecatch_build_info{version=`,
		`corecatch_collect_duration_seconds_count 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

// httpGet returns the body of a 200 answer to GET url, failing the test on
// anything else.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	return string(body)
}
