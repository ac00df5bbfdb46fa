package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// TestBacktraceWithoutDebugger: with no gdb for the agent to run, the
// helper's own frame-pointer walk still names the function that faulted.
func TestBacktraceWithoutDebugger(t *testing.T) {
	n, _, _, _ := agentNode(t, "nogdb", "analysis:\n  gdb: /nonexistent/gdb\n")
	exe := buildSignals(t, n.Dir)
	for _, tc := range []struct{ arg, signal, fn string }{{"segv", "SIGSEGV", "crash_segv"}, {"fpe", "SIGFPE", "crash_fpe"}} {
		cmd := exec.Command(exe, tc.arg)
		n.Crash(cmd)
		m := n.WaitAnalyzed(cmd.Process.Pid)
		if len(m.Backtrace) == 0 || m.Backtrace[0].Function != tc.fn || m.Backtrace[0].Module != "signals" {
			t.Errorf("%s: backtrace %v, want frame 0 in %s (signals)", tc.arg, m.Backtrace, tc.fn)
		}
		if want := tc.signal + " in " + tc.fn + " (signals)"; m.Title != want {
			t.Errorf("%s: title %q, want %q", tc.arg, m.Title, want)
		}
		if m.Analysis == nil || m.Analysis.Unwinder != "frame-pointers" || !strings.Contains(m.Analysis.Reason, "gdb") {
			t.Errorf("%s: analysis %+v, want the frame-pointer walk and why not gdb", tc.arg, m.Analysis)
		}
		if len(m.Signature) != 16 {
			t.Errorf("%s: signature %q", tc.arg, m.Signature)
		}
		t.Logf("%s: %s, %v", tc.arg, m.Title, m.Backtrace)
	}
}

// TestBacktraceGo: a Go program's crash (GOTRACEBACK=crash, which re-raises
// SIGABRT from the runtime's signal handler) is titled by the Go function
// that failed, not by the runtime.
func TestBacktraceGo(t *testing.T) {
	n := harness.Install(t, "")
	exe := filepath.Join(n.Dir, "gocrash")
	// The go command that runs this test: sudo's PATH may not have one.
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", exe, "./test/crashers/gocrash")
	build.Dir = harness.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for arg, want := range map[string]string{"nil": "SIGABRT in main.parseHeader (gocrash)", "panic": "SIGABRT in main.main (gocrash)"} {
		cmd := exec.Command(exe, arg)
		cmd.Env = append(os.Environ(), "GOTRACEBACK=crash")
		n.Crash(cmd)
		if m := n.WaitBundle(cmd.Process.Pid); m.Title != want {
			t.Errorf("%s: title %q, want %q; backtrace %v", arg, m.Title, want, m.Backtrace)
		}
	}
}

// gdbBt runs `corecatch debug ID -- -batch -ex bt` and returns the
// function of each frame.
func gdbBt(t *testing.T, n *harness.Node, id string) []string {
	t.Helper()
	out := n.Run("debug", id, "--cache", filepath.Join(n.Dir, "debug-cache"), "--", "-batch", "-ex", "bt")
	var fns []string
	re := regexp.MustCompile(`^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(`)
	for _, line := range strings.Split(out, "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			if strings.HasPrefix(line, "#0 ") {
				fns = nil // gdb shows frame 0 as it loads the core, then bt shows it again
			}
			fns = append(fns, m[1])
		}
	}
	return fns
}

// TestBacktraceMatchesGDB: with gdb installed where the agent runs, every
// stored bundle's backtrace is gdb's, with files and lines, frame for frame
// as `gdb bt` on the same core shows it; a threaded crash has every thread.
func TestBacktraceMatchesGDB(t *testing.T) {
	n, _, _, _ := agentNode(t, "gdb", "")
	exe := buildSignals(t, n.Dir)
	for _, args := range [][]string{{"segv"}, {"abrt"}, {"bus", "--threads"}} {
		cmd := exec.Command(exe, args...)
		n.Crash(cmd)
		m := n.WaitAnalyzed(cmd.Process.Pid)
		if m.Analysis == nil || m.Analysis.Unwinder != "gdb" {
			t.Errorf("%v: analysis %+v, want gdb", args, m.Analysis)
			continue
		}
		want := gdbBt(t, n, m.ID)
		var got []string
		for _, f := range m.Backtrace {
			got = append(got, f.Function)
		}
		if len(want) < 2 || fmt.Sprint(got[:min(len(got), 4)]) != fmt.Sprint(want[:min(len(want), 4)]) {
			t.Errorf("%v: backtrace %v, gdb bt %v", args, got, want)
		}
		fn := "crash_" + args[0]
		found := false
		for _, f := range m.Backtrace {
			if f.Function == fn && strings.HasSuffix(f.File, "signals.c") && f.Line > 0 && f.BuildID != "" {
				found = true
			}
		}
		if !found {
			t.Errorf("%v: no %s frame with file, line and build-id: %+v", args, fn, m.Backtrace)
		}
		if want := m.SignalName + " in " + fn + " (signals)"; m.Title != want {
			t.Errorf("%v: title %q, want %q (abort/raise frames dropped)", args, m.Title, want)
		}
		if args[len(args)-1] == "--threads" && len(m.Analysis.Threads) != 4 {
			t.Errorf("%v: %d threads unwound, want 4 (main, two blocked, the crasher)", args, len(m.Analysis.Threads))
		}
		t.Logf("%v: %s; %d threads", args, m.Title, len(m.Analysis.Threads))
	}
}

// TestDedupTwoBugs: two bugs of one program crash alternately, 20 times
// each, within the window: two cores are stored, all 40 crashes are
// counted, and each stored bundle says it stands for 20.
func TestDedupTwoBugs(t *testing.T) {
	n, a, _, addr := agentNode(t, "dup", "collect:\n  max_cores_per_minute: 0\n")
	exe := harness.CC(t, n.Dir, "twobugs", []string{"twobugs.c"})
	var last *bundle.Metadata
	for i := range 40 {
		cmd := exec.Command(exe, []string{"header", "record"}[i%2])
		n.Crash(cmd)
		last = n.WaitAnalyzed(cmd.Process.Pid)
	}
	a.waitLine(t, "crash collected", last.ID)
	list := n.Bundles()
	if len(list) != 40 {
		t.Fatalf("%d bundles, want 40", len(list))
	}
	cores := map[string]*bundle.Metadata{}
	drained := map[string]int{}
	for _, m := range list {
		switch {
		case m.Core.StoredBytes > 0 && !m.Core.Truncated:
			cores[m.ID] = m
		case m.Core.TruncateReason == bundle.ReasonDedup && m.Dedup != nil && m.Dedup.Of != "":
			drained[m.Dedup.Of]++
			if len(m.Backtrace) == 0 || m.Title == "" {
				t.Errorf("deduplicated %s lacks its backtrace: %q %v", m.ID, m.Title, m.Backtrace)
			}
		default:
			t.Errorf("bundle %s: core %+v, dedup %+v", m.ID, m.Core, m.Dedup)
		}
	}
	if len(cores) != 2 {
		t.Fatalf("%d stored cores, want 2 (one per bug)", len(cores))
	}
	titles := map[string]bool{}
	for id, m := range cores {
		titles[m.Title] = true
		if drained[id] != 19 || m.Dedup == nil || m.Dedup.Count != 20 {
			t.Errorf("core %s (%s): %d crashes point at it, dedup %+v; want 19 and count 20", id, m.Title, drained[id], m.Dedup)
		}
	}
	if !titles["SIGSEGV in parse_header (twobugs)"] || !titles["SIGSEGV in write_record (twobugs)"] {
		t.Errorf("titles %v, want one per bug", titles)
	}
	metrics := (&service{name: "agent", base: "http://" + addr}).get("/metrics")
	for _, want := range []string{`corecatch_crashes_total{container="",exe="twobugs",namespace="",signal="SIGSEGV",workload=""} 40`,
		`corecatch_cores_dropped_total{reason="dedup"} 38`, `corecatch_cores_stored_total 2`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestGDBUnprivileged: the agent's gdb, which parses the crashed
// container's files, runs as nobody, with no capabilities left to use or
// regain and no_new_privs, reading the bundle it was handed, and still
// unwinds the crash right. The agent runs with the chart's capabilities
// only, as in its pod. A wrapper in gdb's place records the status of the
// process gdb then becomes.
func TestGDBUnprivileged(t *testing.T) {
	dir, err := os.MkdirTemp("", "ccgdbpriv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The wrapper runs as nobody: it must be able to write its record.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(dir, "status")
	wrapper := filepath.Join(dir, "gdb")
	script := fmt.Sprintf("#!/bin/sh\ncat /proc/self/status > %s\nexec %s \"$@\"\n", record, gdb)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := harness.DecodeManifests(harness.RenderChart(t))
	if err != nil {
		t.Fatal(err)
	}
	bounding := "-all"
	for _, c := range m.DaemonSet().Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add {
		bounding += ",+" + strings.ToLower(string(c))
	}
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccgdbpriv-%d.sock", os.Getpid()))
	n := harness.Install(t, "socket: "+socket+"\nanalysis:\n  gdb: "+wrapper+"\n")
	t.Cleanup(func() { os.Remove(socket) })
	runAgent(t, exec.Command("setpriv", "--bounding-set="+bounding, "--inh-caps=-all", "--",
		n.Bin, "--config", n.Config, "agent", "--listen", "127.0.0.1:0"), socket)
	exe := buildSignals(t, n.Dir)
	cmd := exec.Command(exe, "segv", "--threads")
	n.Crash(cmd)
	b := n.WaitAnalyzed(cmd.Process.Pid)
	if b.Analysis == nil || b.Analysis.Unwinder != "gdb" || len(b.Backtrace) == 0 || b.Backtrace[0].Function != "crash_segv" ||
		!strings.HasSuffix(b.Backtrace[0].File, "signals.c") || len(b.Analysis.Threads) != 4 {
		t.Fatalf("analysis %+v, backtrace %+v: want gdb's, crash_segv in signals.c first, 4 threads", b.Analysis, b.Backtrace)
	}
	status, err := os.ReadFile(record)
	if err != nil {
		t.Fatalf("the gdb wrapper left no record: %v", err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			got[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	zero := "0000000000000000"
	for k, want := range map[string]string{"Uid": "65534 65534 65534 65534", "Gid": "65534 65534 65534 65534", "Groups": "",
		"CapInh": zero, "CapPrm": zero, "CapEff": zero, "CapBnd": zero, "CapAmb": zero, "NoNewPrivs": "1"} {
		if got[k] != want {
			t.Errorf("gdb's %s: %q, want %q", k, got[k], want)
		}
	}
	t.Logf("%s: %d threads; the agent with %s, gdb as uid 65534 without capabilities, no_new_privs", b.Title, len(b.Analysis.Threads), bounding)
}
