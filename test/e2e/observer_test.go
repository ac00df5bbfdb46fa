package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/observer"
	"github.com/corecatch/corecatch/test/harness"
)

const (
	// obsWait bounds every wait for an event or a line.
	obsWait = 5 * time.Second
	// obsSettle is how long after a process's last expected event (or its
	// reaping) a duplicate or unwanted event would have arrived.
	obsSettle = 300 * time.Millisecond
)

// Signal codes of siginfo(2), as the kernel sets them.
const (
	siUser     = 0  // SI_USER: kill(2)
	siTkill    = -6 // SI_TKILL: tgkill(2), as abort() raises SIGABRT
	segvMaperr = 1  // SEGV_MAPERR: no mapping at the address
	busAdrerr  = 2  // BUS_ADRERR: past the end of a mapped file
	fpeIntdiv  = 1  // FPE_INTDIV: integer divide by zero
)

// TestObserverFaults crashes a program with real faults, with abort() and
// with a SIGSEGV sent by this test, each inside a fresh v2 cgroup, and checks
// that the observer reports each with exactly one core event (right
// process, signal, si_code, fault address or sender, namespace pid, comm and
// cgroup) and then one exit event whose outcome matches the wait status. A
// crash in one of several threads is one core event too, not one per thread.
func TestObserverFaults(t *testing.T) {
	harness.Privileged(t)
	exe := buildSignals(t, t.TempDir())
	w := obsLoad(t, observer.Options{})
	if w.ob.Mode() != observer.ModeBTF {
		t.Fatalf("observer mode %q on a kernel with BTF, want %q", w.ob.Mode(), observer.ModeBTF)
	}

	t.Run("null dereference", func(t *testing.T) {
		cgID, cg := obsCgroup(t)
		cmd := obsCommand(t, exe, cg, "segv")
		obsRun(t, cmd)
		obsCheckDeath(t, w.waitKind(t, cmd.Process.Pid, observer.KindExit), cmd, obsDeath{
			kind: observer.KindCore, sig: syscall.SIGSEGV, cgroup: cgID,
			siginfo: true, siCode: segvMaperr, faultLo: 0, faultHi: 1,
		})
	})
	t.Run("abort", func(t *testing.T) {
		cgID, cg := obsCgroup(t)
		cmd := obsCommand(t, exe, cg, "abrt")
		obsRun(t, cmd)
		obsCheckDeath(t, w.waitKind(t, cmd.Process.Pid, observer.KindExit), cmd, obsDeath{
			kind: observer.KindCore, sig: syscall.SIGABRT, cgroup: cgID,
			siginfo: true, siCode: siTkill, sender: cmd.Process.Pid,
		})
	})
	t.Run("bus error past a truncated file", func(t *testing.T) {
		cgID, cg := obsCgroup(t)
		cmd := obsCommand(t, exe, cg, "bus")
		out := obsRun(t, cmd)
		var lo, hi uint64
		if _, err := fmt.Sscanf(out, "%x-%x\n", &lo, &hi); err != nil || lo == 0 || hi <= lo {
			t.Fatalf("crasher printed %q, want its mapping as START-END in hex (%v)", out, err)
		}
		obsCheckDeath(t, w.waitKind(t, cmd.Process.Pid, observer.KindExit), cmd, obsDeath{
			kind: observer.KindCore, sig: syscall.SIGBUS, cgroup: cgID,
			siginfo: true, siCode: busAdrerr, faultLo: lo, faultHi: hi,
		})
	})
	t.Run("integer divide by zero", func(t *testing.T) {
		cgID, cg := obsCgroup(t)
		cmd := obsCommand(t, exe, cg, "fpe")
		obsRun(t, cmd)
		obsCheckDeath(t, w.waitKind(t, cmd.Process.Pid, observer.KindExit), cmd, obsDeath{
			kind: observer.KindCore, sig: syscall.SIGFPE, cgroup: cgID,
			siginfo: true, siCode: fpeIntdiv, faultLo: 1, faultHi: ^uint64(0),
		})
	})
	t.Run("kill -SEGV from another process", func(t *testing.T) {
		cgID, cg := obsCgroup(t)
		cmd := obsCommand(t, exe, cg, "segv", "--wait")
		obsKill(t, cmd, syscall.SIGSEGV)
		obsCheckDeath(t, w.waitKind(t, cmd.Process.Pid, observer.KindExit), cmd, obsDeath{
			kind: observer.KindCore, sig: syscall.SIGSEGV, cgroup: cgID,
			siginfo: true, siCode: siUser, sender: os.Getpid(),
		})
	})
	t.Run("threads", func(t *testing.T) {
		cgID, cg := obsCgroup(t)
		cmd := obsCommand(t, exe, cg, "segv", "--threads")
		obsRun(t, cmd)
		evs := w.waitKind(t, cmd.Process.Pid, observer.KindExit)
		obsCheckDeath(t, evs, cmd, obsDeath{
			kind: observer.KindCore, sig: syscall.SIGSEGV, cgroup: cgID,
			siginfo: true, siCode: segvMaperr, faultLo: 0, faultHi: 1,
		})
		if len(evs) > 0 && evs[0].TID == evs[0].TGID {
			t.Errorf("core event from tid %d, the main thread: want the crashing thread", evs[0].TID)
		}
	})
}

// TestObserverHandledSegv runs a program that catches its own SIGSEGV and
// goes on to exit 0: a handled signal is not fatal, so the observer must
// report nothing for it, neither a core nor an exit event.
func TestObserverHandledSegv(t *testing.T) {
	harness.Privileged(t)
	exe := buildSignals(t, t.TempDir())
	w := obsLoad(t, observer.Options{})
	cmd := obsCommand(t, exe, nil, "handled")
	out, err := cmd.Output()
	if err != nil || string(out) != "survived\n" {
		t.Fatalf("signals handled: %v, printed %q; want exit 0 and \"survived\"", err, out)
	}
	time.Sleep(obsSettle)
	if evs := w.events(cmd.Process.Pid); len(evs) != 0 {
		t.Errorf("a process that handled its SIGSEGV and exited 0 got events:\n%s", obsList(evs))
	}
}

// TestObserverFatalSignals kills a waiting process with SIGKILL and with
// SIGTERM (no handler): each is one fatal event with the real signal, which
// the kernel delivers as a group exit, then an exit event with outcome
// killed.
func TestObserverFatalSignals(t *testing.T) {
	harness.Privileged(t)
	exe := buildSignals(t, t.TempDir())
	for _, senders := range []bool{false, true} {
		w := obsLoad(t, observer.Options{Senders: senders})
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			t.Run(fmt.Sprintf("%v/senders=%v", sig, senders), func(t *testing.T) {
				cgID, cg := obsCgroup(t)
				cmd := obsCommand(t, exe, cg, "segv", "--wait")
				obsKill(t, cmd, sig)
				want := obsDeath{kind: observer.KindFatal, sig: sig, cgroup: cgID, groupExit: true}
				if senders {
					// kill(2) from this test: SI_USER from our pid.
					want.siginfo, want.siCode, want.sender = true, siUser, os.Getpid()
				}
				obsCheckDeath(t, w.waitKind(t, cmd.Process.Pid, observer.KindExit), cmd, want)
			})
		}
		w.ob.Close()
	}
}

// TestObserverTracepoint forces the classic tracepoint program, the
// fallback for kernels without BTF: a NULL dereference is exactly one core
// event with the right process, signal, si_code and cgroup (that program
// has no fault address and no exit events).
func TestObserverTracepoint(t *testing.T) {
	harness.Privileged(t)
	exe := buildSignals(t, t.TempDir())
	w := obsLoad(t, observer.Options{Mode: observer.ModeTracepoint})
	if w.ob.Mode() != observer.ModeTracepoint {
		t.Fatalf("observer mode %q, want the forced %q", w.ob.Mode(), observer.ModeTracepoint)
	}
	cgID, cg := obsCgroup(t)
	cmd := obsCommand(t, exe, cg, "segv")
	obsRun(t, cmd)
	pid := cmd.Process.Pid
	evs := w.waitKind(t, pid, observer.KindCore)
	var cores []observer.Event
	for _, e := range evs {
		switch e.Kind {
		case observer.KindCore:
			cores = append(cores, e)
		case observer.KindFatal:
			t.Errorf("fatal event for a NULL dereference: %v", e)
		}
	}
	if len(cores) != 1 {
		t.Fatalf("%d core events for pid %d, want exactly 1:\n%s", len(cores), pid, obsList(evs))
	}
	e := cores[0]
	if e.TGID != pid || e.TID != pid {
		t.Errorf("core event tgid/tid %d/%d, want %d/%d", e.TGID, e.TID, pid, pid)
	}
	if e.Signal != int(syscall.SIGSEGV) || e.SiCode != segvMaperr {
		t.Errorf("core event signal %d si_code %d, want %d (SIGSEGV) and %d (SEGV_MAPERR)", e.Signal, e.SiCode, syscall.SIGSEGV, segvMaperr)
	}
	if e.CgroupID != cgID {
		t.Errorf("core event cgroup_id %d, want %d (the test's cgroup)", e.CgroupID, cgID)
	}
	if e.Comm != "signals" {
		t.Errorf("core event comm %q, want \"signals\"", e.Comm)
	}
}

// TestObserverCLI runs `corecatch trace --json` as an operator would,
// crashes a process, checks the JSON lines of its core and exit events key
// by key, and that SIGINT stops the command cleanly with its loss counts.
func TestObserverCLI(t *testing.T) {
	harness.Privileged(t)
	exe := buildSignals(t, t.TempDir())
	config := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(config, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	trace := exec.Command(harness.Binary(t), "--config", config, "trace", "--json")
	stdout, outW := obsLines(t, &trace.Stdout)
	stderr, errW := obsLines(t, &trace.Stderr)
	err := trace.Start()
	// Only the child holds the write ends now: the readers see end of file
	// when it exits.
	outW.Close()
	errW.Close()
	if err != nil {
		t.Fatalf("start corecatch trace: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- trace.Wait() }()
	t.Cleanup(func() {
		if trace.ProcessState == nil {
			trace.Process.Kill()
			<-exited
		}
	})
	var said []string
	for !strings.Contains(strings.Join(said, "\n"), "tracing") {
		line, ok := obsNext(stderr)
		if !ok {
			t.Fatalf("corecatch trace said no \"tracing\" line on stderr within %v:\n%s", obsWait, strings.Join(said, "\n"))
		}
		said = append(said, line)
	}

	cgID, cg := obsCgroup(t)
	cmd := obsCommand(t, exe, cg, "segv")
	obsRun(t, cmd)
	pid := cmd.Process.Pid
	byKind := map[string]map[string]any{}
	for byKind["exit"] == nil {
		line, ok := obsNext(stdout)
		if !ok {
			t.Fatalf("no exit event for pid %d on corecatch trace's stdout within %v; its events: %v", pid, obsWait, byKind)
		}
		dec := json.NewDecoder(strings.NewReader(line))
		dec.UseNumber()
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			t.Fatalf("corecatch trace printed a line that is not one JSON object: %v\n%s", err, line)
		}
		if n, ok := obj["tgid"].(json.Number); !ok || n.String() != strconv.Itoa(pid) {
			continue
		}
		kind, _ := obj["kind"].(string)
		if byKind[kind] != nil {
			t.Errorf("a second %q line for pid %d: %s", kind, pid, line)
		}
		byKind[kind] = obj
	}
	core := byKind["core"]
	if core == nil || len(byKind) != 2 {
		t.Fatalf("pid %d: want one core and one exit line, got %v", pid, byKind)
	}
	j := obsJSON{t: t, what: "core line", obj: core}
	if at, err := time.Parse(time.RFC3339Nano, j.str("time")); err != nil || time.Since(at).Abs() > time.Minute {
		t.Errorf("core line: time %q is not an RFC 3339 time within a minute of now (%v)", j.str("time"), err)
	}
	for _, key := range []string{"tgid", "tid", "ns_pid"} {
		j.int(key, int64(pid))
	}
	j.int("signal", int64(syscall.SIGSEGV))
	j.int("si_code", segvMaperr)
	j.int("sender_pid", 0)
	if got := j.num("cgroup_id"); got != strconv.FormatUint(cgID, 10) {
		t.Errorf("core line: cgroup_id %s, want %d (the test's cgroup)", got, cgID)
	}
	for key, want := range map[string]string{"kind": "core", "comm": "signals", "signal_name": "SIGSEGV", "fault_addr": "0x0"} {
		if got := j.str(key); got != want {
			t.Errorf("core line: %s %q, want %q", key, got, want)
		}
	}
	stack, ok := core["stack"].([]any)
	if !ok || len(stack) == 0 {
		t.Errorf("core line: stack %#v, want a non-empty array", core["stack"])
	}
	hexAddr := regexp.MustCompile(`^0x[0-9a-f]+$`)
	for i, f := range stack {
		if s, ok := f.(string); !ok || !hexAddr.MatchString(s) {
			t.Errorf("core line: stack[%d] is %#v, want a hex string like 0x7f00", i, f)
		}
	}
	for _, key := range []string{"exit_code", "outcome"} {
		if v, ok := core[key]; ok {
			t.Errorf("core line has %s %v: only exit lines carry it", key, v)
		}
	}
	j = obsJSON{t: t, what: "exit line", obj: byKind["exit"]}
	if code, err := strconv.Atoi(j.num("exit_code")); err != nil || code&0x7f != int(syscall.SIGSEGV) {
		t.Errorf("exit line: exit_code %s, want one whose low 7 bits are %d (SIGSEGV)", j.num("exit_code"), syscall.SIGSEGV)
	}
	if got, want := j.str("outcome"), obsOutcome(cmd, observer.KindCore); got != want {
		t.Errorf("exit line: outcome %q, want %q", got, want)
	}

	if err := trace.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("corecatch trace after SIGINT: %v, want exit status 0", err)
		}
	case <-time.After(obsWait):
		t.Fatalf("corecatch trace still runs %v after SIGINT", obsWait)
	}
	for {
		line, ok := obsNext(stderr)
		if !ok {
			break
		}
		said = append(said, line)
	}
	counts := regexp.MustCompile(`lost in the kernel: (\d+), dropped by the reader: (\d+)`).FindStringSubmatch(strings.Join(said, "\n"))
	if counts == nil {
		t.Errorf("corecatch trace printed no lost/dropped counts on stderr after SIGINT:\n%s", strings.Join(said, "\n"))
	} else if counts[1] != "0" || counts[2] != "0" {
		t.Errorf("corecatch trace lost %s and dropped %s events, want none", counts[1], counts[2])
	}
}

// obsWatch keeps every event of an observer, by thread group.
type obsWatch struct {
	ob     *observer.Observer
	mu     sync.Mutex
	byTGID map[int][]observer.Event
}

// obsLoad loads the observer for the test, reads its events from the whole
// node, and when the test ends checks that none was lost or dropped and
// closes it.
func obsLoad(t *testing.T, opts observer.Options) *obsWatch {
	t.Helper()
	ob, err := observer.Load(opts)
	if err != nil {
		t.Fatalf("load the observer: %v", err)
	}
	w := &obsWatch{ob: ob, byTGID: map[int][]observer.Event{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range ob.Events() {
			w.mu.Lock()
			w.byTGID[e.TGID] = append(w.byTGID[e.TGID], e)
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		if st := ob.Stats(); st.Lost != 0 || st.Dropped != 0 || st.Undecodable != 0 {
			t.Errorf("observer stats %+v: want no lost, dropped or undecodable events", st)
		}
		if err := ob.Close(); err != nil {
			t.Errorf("close the observer: %v", err)
		}
		<-done
	})
	return w
}

// events returns the events of a thread group so far, in arrival order.
func (w *obsWatch) events(tgid int) []observer.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]observer.Event(nil), w.byTGID[tgid]...)
}

// waitKind waits for an event of kind for tgid, then obsSettle more for
// any that should not come, and returns all of tgid's events.
func (w *obsWatch) waitKind(t *testing.T, tgid int, kind observer.Kind) []observer.Event {
	t.Helper()
	deadline := time.Now().Add(obsWait)
	for {
		for _, e := range w.events(tgid) {
			if e.Kind == kind {
				time.Sleep(obsSettle)
				return w.events(tgid)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event for pid %d within %v; its events:\n%s", kind, tgid, obsWait, obsList(w.events(tgid)))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// obsCgroup creates a cgroup in the v2 hierarchy (/sys/fs/cgroup/unified
// on hybrid hosts, /sys/fs/cgroup on pure v2 ones), removed when the test
// ends, and returns its id, the directory's inode, and the open directory
// for SysProcAttr.CgroupFD.
func obsCgroup(t *testing.T) (uint64, *os.File) {
	t.Helper()
	root := ""
	for _, dir := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err == nil {
			root = dir
			break
		}
	}
	if root == "" {
		t.Fatal("no cgroup v2 hierarchy: neither /sys/fs/cgroup/unified nor /sys/fs/cgroup has cgroup.controllers")
	}
	dir, err := os.MkdirTemp(root, "corecatch-e2e-")
	if err != nil {
		t.Fatalf("create a v2 cgroup: %v", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		os.Remove(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		// The kernel may need a moment after the last member is reaped.
		deadline := time.Now().Add(obsWait)
		for err := os.Remove(dir); err != nil; err = os.Remove(dir) {
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino, f
}

// obsCommand returns a command of exe that starts inside the cgroup cg (no
// cgroup of its own when nil), in a fresh working directory, so that a core
// file the machine's core_pattern may write lands in no one's way.
func obsCommand(t *testing.T, exe string, cg *os.File, args ...string) *exec.Cmd {
	cmd := exec.Command(exe, args...)
	cmd.Dir = t.TempDir()
	if cg != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	}
	return cmd
}

// obsRun runs a crasher that is expected to die of a signal and returns
// what it printed on stdout.
func obsRun(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if cmd.ProcessState == nil {
		t.Fatalf("start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	if !cmd.ProcessState.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("%s did not die of a signal: %v\n%s", strings.Join(cmd.Args, " "), cmd.ProcessState, stderr.Bytes())
	}
	return out.String()
}

// obsKill starts a crasher run with --wait, waits until it says ready (it
// then blocks reading stdin), sends it sig from this process and reaps it.
func obsKill(t *testing.T, cmd *exec.Cmd, sig syscall.Signal) {
	t.Helper()
	if _, err := cmd.StdinPipe(); err != nil { // kept open: the crasher blocks reading it
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("%s said %q (%v), want ready", strings.Join(cmd.Args, " "), line, err)
	}
	if err := syscall.Kill(cmd.Process.Pid, sig); err != nil {
		t.Fatalf("kill -%d %d: %v", sig, cmd.Process.Pid, err)
	}
	cmd.Wait()
}

// obsDeath is what the observer must report of a process's death.
type obsDeath struct {
	kind   observer.Kind
	sig    syscall.Signal
	cgroup uint64
	// siginfo: the event carries si_code, the sender (si_code <= 0) and a
	// fault address in [faultLo, faultHi) (si_code > 0).
	siginfo          bool
	siCode           int
	sender           int
	faultLo, faultHi uint64
	groupExit        bool
}

// obsCheckDeath checks that a reaped process's events are exactly one
// report as want says, then one exit event whose exit code and outcome
// match how the process died.
func obsCheckDeath(t *testing.T, evs []observer.Event, cmd *exec.Cmd, want obsDeath) {
	t.Helper()
	pid := cmd.Process.Pid
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != want.sig {
		t.Errorf("pid %d ended with %v, want death by %v", pid, cmd.ProcessState, want.sig)
	}
	if len(evs) != 2 || evs[0].Kind != want.kind || evs[1].Kind != observer.KindExit {
		t.Fatalf("pid %d: want exactly one %s event, then one exit event; got:\n%s", pid, want.kind, obsList(evs))
	}
	for _, e := range evs {
		if e.TGID != pid || e.NSPID != pid {
			t.Errorf("%s event: tgid %d ns_pid %d, want %d (the host pid namespace)", e.Kind, e.TGID, e.NSPID, pid)
		}
		if e.Comm != "signals" {
			t.Errorf("%s event: comm %q, want \"signals\"", e.Kind, e.Comm)
		}
		if e.CgroupID != want.cgroup {
			t.Errorf("%s event: cgroup_id %d, want %d (the test's cgroup)", e.Kind, e.CgroupID, want.cgroup)
		}
	}
	e := evs[0]
	if e.Signal != int(want.sig) {
		t.Errorf("%s event: signal %d, want %d (%v)", e.Kind, e.Signal, want.sig, want.sig)
	}
	if e.GroupExit != want.groupExit {
		t.Errorf("%s event: group_exit %v, want %v", e.Kind, e.GroupExit, want.groupExit)
	}
	if want.siginfo {
		if !e.FromSiginfo {
			t.Errorf("%s event: not from a siginfo", e.Kind)
		}
		if e.SiCode != want.siCode {
			t.Errorf("%s event: si_code %d, want %d", e.Kind, e.SiCode, want.siCode)
		}
		if e.SenderPID != want.sender {
			t.Errorf("%s event: sender_pid %d, want %d", e.Kind, e.SenderPID, want.sender)
		}
		if want.siCode > 0 && (e.FaultAddr < want.faultLo || e.FaultAddr >= want.faultHi) {
			t.Errorf("%s event: fault_addr %#x, want one in [%#x, %#x)", e.Kind, e.FaultAddr, want.faultLo, want.faultHi)
		}
	}
	x := evs[1]
	if x.ExitCode&0x7f != int(want.sig) || x.Signal != int(want.sig) {
		t.Errorf("exit event: exit_code %#x signal %d, want signal %d in the low 7 bits", x.ExitCode, x.Signal, want.sig)
	}
	if dumped := x.ExitCode&0x80 != 0; dumped != ws.CoreDump() {
		t.Errorf("exit event: exit_code %#x says core dumped %v, the wait status %v", x.ExitCode, dumped, ws.CoreDump())
	}
	if got, want := x.Outcome, obsOutcome(cmd, want.kind); got != want {
		t.Errorf("exit event: outcome %q, want %q", got, want)
	}
}

// obsOutcome is the exit outcome a reaped process reported with kind must
// have: for a core signal, whether the wait status says a core was dumped.
func obsOutcome(cmd *exec.Cmd, kind observer.Kind) string {
	switch {
	case kind != observer.KindCore:
		return observer.OutcomeKilled
	case cmd.ProcessState.Sys().(syscall.WaitStatus).CoreDump():
		return observer.OutcomeCoreDumped
	}
	return observer.OutcomeCoreMissing
}

func obsList(evs []observer.Event) string {
	if len(evs) == 0 {
		return "  (none)"
	}
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %v\n", e)
	}
	return b.String()
}

// obsLines makes *w, an output of a command, the write end of a pipe whose
// lines arrive on the returned channel, closed at end of file. The caller
// closes the write end once the command started.
func obsLines(t *testing.T, w *io.Writer) (<-chan string, *os.File) {
	t.Helper()
	r, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	*w = wr
	lines := make(chan string, 4096)
	go func() {
		defer close(lines)
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return lines, wr
}

// obsNext returns the next line, or false at end of file or after obsWait.
func obsNext(lines <-chan string) (string, bool) {
	select {
	case line, ok := <-lines:
		return line, ok
	case <-time.After(obsWait):
		return "", false
	}
}

// obsJSON reads typed fields of one decoded JSON line.
type obsJSON struct {
	t    *testing.T
	what string
	obj  map[string]any
}

func (j obsJSON) str(key string) string {
	j.t.Helper()
	s, ok := j.obj[key].(string)
	if !ok {
		j.t.Errorf("%s: %s is %#v, want a string", j.what, key, j.obj[key])
	}
	return s
}

func (j obsJSON) num(key string) string {
	j.t.Helper()
	n, ok := j.obj[key].(json.Number)
	if !ok {
		j.t.Errorf("%s: %s is %#v, want a number", j.what, key, j.obj[key])
	}
	return n.String()
}

func (j obsJSON) int(key string, want int64) {
	j.t.Helper()
	if got := j.num(key); got != strconv.FormatInt(want, 10) {
		j.t.Errorf("%s: %s %s, want %d", j.what, key, got, want)
	}
}

// TestObserverOOMKill runs a process past a memory cgroup's limit: the OOM
// killer's SIGKILL is one fatal event, flagged oom, and an exit event with
// outcome killed. The limit lives in the v1 memory controller on v1 and
// hybrid hosts, in memory.max on v2 hosts with the memory controller.
func TestObserverOOMKill(t *testing.T) {
	harness.Privileged(t)
	dir, limitFile := "", ""
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err == nil {
		dir, limitFile = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
	} else if data, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil && strings.Contains(string(data), "memory") {
		dir, limitFile = "/sys/fs/cgroup", "memory.max"
	} else {
		t.Fatal("no memory controller: neither /sys/fs/cgroup/memory (v1) nor memory in /sys/fs/cgroup/cgroup.controllers (v2)")
	}
	cg, err := os.MkdirTemp(dir, "corecatch-oom-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(obsWait)
		for os.Remove(cg) != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	})
	if err := os.WriteFile(filepath.Join(cg, limitFile), []byte("33554432"), 0o644); err != nil {
		t.Fatalf("limit %s: %v", cg, err)
	}
	exe := harness.CC(t, t.TempDir(), "lim_mem", []string{"lim_mem.c"}, "-O2")
	w := obsLoad(t, observer.Options{})
	// The shell joins the cgroup, then becomes the process that runs out.
	cmd := exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$1" 256 fill`, cg, exe)
	err = cmd.Run()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the process ended with %v (%v), want the OOM killer's SIGKILL", cmd.ProcessState, err)
	}
	evs := w.waitKind(t, cmd.Process.Pid, observer.KindExit)
	if len(evs) != 2 || evs[0].Kind != observer.KindFatal || evs[1].Kind != observer.KindExit {
		t.Fatalf("want one fatal event and one exit event, got:\n%s", obsList(evs))
	}
	if e := evs[0]; e.Signal != int(syscall.SIGKILL) || !e.OOM || !e.GroupExit {
		t.Errorf("fatal event: signal %d oom %v group_exit %v, want SIGKILL, oom, group_exit", e.Signal, e.OOM, e.GroupExit)
	}
	if x := evs[1]; x.Outcome != observer.OutcomeKilled {
		t.Errorf("exit event outcome %q, want %q", x.Outcome, observer.OutcomeKilled)
	}
}
