package e2e

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/coresock"
	"github.com/corecatch/corecatch/test/harness"
)

// intakeNode is agentNode with a coredump socket of its own.
func intakeNode(t *testing.T, name, extra string) (n *harness.Node, a *agentProc, socket, addr, cores string) {
	t.Helper()
	cores = filepath.Join(os.TempDir(), fmt.Sprintf("cc%s-%d.core.sock", name, os.Getpid()))
	t.Cleanup(func() { os.Remove(cores) })
	n, a, socket, addr = agentNode(t, name, "coredump_socket: "+cores+"\n"+extra)
	return n, a, socket, addr, cores
}

// TestSocketIntake: by default the agent takes cores over the kernel's
// coredump socket; with the agent stopped the pipe helper collects alone; an agent
// configured with intake: pipe uses the helper. The same crash (without
// address randomisation) gives the same bundle through all three, and
// each core is every byte the kernel dumped: the same program headers, and
// the same bytes in the ELF headers of every file they mapped (the kernel
// dumps a mapped file's first page, not its code).
func TestSocketIntake(t *testing.T) {
	n, a, socket, addr, cores := intakeNode(t, "intk", "dedup:\n  window: \"0\"\n")
	exe := buildSignals(t, n.Dir)
	crash := func() *bundle.Metadata {
		t.Helper()
		cmd := exec.Command("setarch", "-R", exe, "segv")
		n.Crash(cmd)
		return n.WaitAnalyzed(cmd.Process.Pid)
	}
	if got := readKernel(t, "core_pattern"); got != coresock.Pattern(cores)+"\n" {
		t.Fatalf("core_pattern %q with the agent running, want the coredump socket %q", got, coresock.Pattern(cores))
	}
	a.waitLine(t, "installed", `"intake":"socket"`)
	if m := httpGet(t, "http://"+addr+"/metrics"); !strings.Contains(m, `corecatch_intake_info{mode="socket"} 1`) {
		t.Errorf("/metrics lacks corecatch_intake_info{mode=\"socket\"} 1")
	}
	viaSocket := crash()
	a.waitLine(t, "crash collected", viaSocket.ID)

	// The agent stopped, the pipe helper installed: it collects alone.
	a.cmd.Process.Signal(syscall.SIGTERM)
	if err := a.cmd.Wait(); err != nil {
		t.Errorf("agent exit after SIGTERM: %v", err)
	}
	n.Run("install")
	if got := readKernel(t, "core_pattern"); !strings.HasPrefix(got, "|"+n.Bin+" collect") {
		t.Fatalf("core_pattern %q after install, want the pipe helper", got)
	}
	standalone := crash()

	// intake: pipe.
	cfg, err := os.ReadFile(n.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.Config, append(cfg, "intake: pipe\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	addr = freeAddr(t)
	a = startAgentListen(t, n, socket, addr)
	a.waitLine(t, "installed", `"intake":"pipe"`)
	if got := readKernel(t, "core_pattern"); !strings.HasPrefix(got, "|"+n.Bin+" collect") {
		t.Fatalf("core_pattern %q with intake pipe, want the pipe helper", got)
	}
	if m := httpGet(t, "http://"+addr+"/metrics"); !strings.Contains(m, `corecatch_intake_info{mode="pipe"} 1`) {
		t.Errorf("/metrics lacks corecatch_intake_info{mode=\"pipe\"} 1")
	}
	viaPipe := crash()

	ref := sameCrash(viaSocket)
	for name, m := range map[string]*bundle.Metadata{"standalone": standalone, "pipe": viaPipe} {
		if got := sameCrash(m); got != ref {
			t.Errorf("the %s bundle differs from the socket's:\n%s\nwant\n%s", name, got, ref)
		}
	}
	refCore := coreOf(t, n, viaSocket)
	for name, m := range map[string]*bundle.Metadata{"standalone": standalone, "pipe": viaPipe} {
		compareCores(t, name, refCore, coreOf(t, n, m))
	}
	if viaSocket.EBPF == nil || viaPipe.EBPF == nil || standalone.EBPF != nil {
		t.Errorf("ebpf sections: socket %v, pipe %v, standalone %v; want the agent's two only", viaSocket.EBPF != nil, viaPipe.EBPF != nil, standalone.EBPF != nil)
	}
}

// sameCrash renders what a bundle says of its crash, without what differs
// from one crash to the next (ids, times, pids, durations) or from one
// intake to the next (the eBPF section and gdb's analysis need an agent).
func sameCrash(m *bundle.Metadata) string {
	var b strings.Builder
	fmt.Fprintf(&b, "signal %s comm %s exe %s cmdline %q uid %d gid %d dumpable %d\n", m.SignalName, m.Comm, m.Exe, m.Cmdline, m.UID, m.GID, m.Dumpable)
	fmt.Fprintf(&b, "title %s signature %s\n", m.Title, m.Signature)
	c := m.Core
	fmt.Fprintf(&b, "core raw %d kept %d expected %d truncated %v %s rlimit %d\n", c.RawBytes, c.KeptBytes, c.ExpectedBytes, c.Truncated, c.TruncateReason, c.RlimitCore)
	var files []string
	for _, f := range m.Files {
		files = append(files, fmt.Sprintf("%s %s %s %d %s", f.Role, f.Path, f.SHA256, f.Size, f.Stored))
	}
	slices.Sort(files)
	fmt.Fprintf(&b, "files\n  %s\n", strings.Join(files, "\n  "))
	return b.String()
}

// coreOf decompresses a bundle's core.
func coreOf(t *testing.T, n *harness.Node, m *bundle.Metadata) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join(n.BundleDir(m.ID), bundle.CoreFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	var out bytes.Buffer
	if _, err := out.ReadFrom(dec); err != nil {
		t.Fatalf("decompress %s's core: %v", m.ID, err)
	}
	if int64(out.Len()) != m.Core.ExpectedBytes {
		t.Errorf("%s's core is %d bytes, its headers promise %d", m.ID, out.Len(), m.Core.ExpectedBytes)
	}
	return out.Bytes()
}

// compareCores checks that two cores of the same program, run without
// address randomisation, have the same segments, and the same bytes in the
// ELF header pages of the files they mapped.
func compareCores(t *testing.T, name string, want, got []byte) {
	t.Helper()
	we, err := elf.NewFile(bytes.NewReader(want))
	if err != nil {
		t.Fatal(err)
	}
	ge, err := elf.NewFile(bytes.NewReader(got))
	if err != nil {
		t.Fatalf("the %s core: %v", name, err)
	}
	if len(we.Progs) != len(ge.Progs) {
		t.Fatalf("the %s core has %d segments, the socket's %d", name, len(ge.Progs), len(we.Progs))
	}
	mapped := fileMappings(t, want, we)
	same := 0
	for i, w := range we.Progs {
		g := ge.Progs[i]
		if w.Type != g.Type || w.Vaddr != g.Vaddr || w.Filesz != g.Filesz || w.Memsz != g.Memsz || w.Flags != g.Flags {
			t.Errorf("the %s core's segment %d is %+v, the socket's %+v", name, i, g.ProgHeader, w.ProgHeader)
			continue
		}
		if w.Type != elf.PT_LOAD || w.Flags&elf.PF_W != 0 || !mapped[w.Vaddr] || !bytes.HasPrefix(want[w.Off:w.Off+w.Filesz], []byte("\x7fELF")) {
			continue // data (written to, or relocated with a random pointer guard), or not a file's
		}
		wb, gb := want[w.Off:w.Off+w.Filesz], got[g.Off:g.Off+g.Filesz]
		if !bytes.Equal(wb, gb) {
			t.Errorf("the %s core's mapped file header at %#x differs from the socket's", name, w.Vaddr)
		}
		same++
	}
	if same == 0 {
		t.Errorf("no mapped file's header to compare in the %s core", name)
	}
}

// fileMappings returns the start addresses of a core's file-backed
// mappings, from its NT_FILE note.
func fileMappings(t *testing.T, core []byte, f *elf.File) map[uint64]bool {
	t.Helper()
	const ntFile = 0x46494c45
	out := map[uint64]bool{}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		notes := core[p.Off : p.Off+p.Filesz]
		for len(notes) >= 12 {
			namesz, descsz, typ := binary.LittleEndian.Uint32(notes), binary.LittleEndian.Uint32(notes[4:]), binary.LittleEndian.Uint32(notes[8:])
			desc := notes[12+(namesz+3)&^3:]
			if typ == ntFile {
				count := binary.LittleEndian.Uint64(desc)
				for i := range count {
					out[binary.LittleEndian.Uint64(desc[16+24*i:])] = true
				}
			}
			notes = desc[min(int((descsz+3)&^3), len(desc)):]
		}
	}
	if len(out) == 0 {
		t.Fatal("the core has no NT_FILE note")
	}
	return out
}

// TestSocketIntakeRefusesDuplicates: the second and later crashes of a bug
// within its dedup window are refused before the kernel dumps a byte (no
// core dumped, raw_bytes 0), each recorded with its signature, backtrace
// and the bundle that keeps the bug's core; that bundle counts them.
func TestSocketIntakeRefusesDuplicates(t *testing.T) {
	n, a, _, _, _ := intakeNode(t, "dupk", "")
	exe := buildSignals(t, n.Dir)
	var first *bundle.Metadata
	for i := range 5 {
		cmd := exec.Command(exe, "segv")
		cmd.Run()
		if cmd.ProcessState == nil {
			t.Fatal("the crasher did not run")
		}
		dumped := cmd.ProcessState.Sys().(syscall.WaitStatus).CoreDump()
		m := n.WaitBundle(cmd.Process.Pid)
		if i == 0 {
			first = m
			if !dumped {
				t.Fatalf("the first crash dumped no core")
			}
			checkWholeCore(t, m)
			continue
		}
		if dumped {
			t.Errorf("crash %d: the kernel dumped a core the agent should have refused", i)
		}
		if m.Core.RawBytes != 0 || m.Core.TruncateReason != bundle.ReasonDedup || m.Dedup == nil || m.Dedup.Of != first.ID {
			t.Errorf("crash %d: core %+v dedup %+v, want nothing dumped, dedup of %s", i, m.Core, m.Dedup, first.ID)
		}
		if m.Signature != first.Signature || len(m.Backtrace) == 0 || m.Title != "SIGSEGV in crash_segv (signals)" {
			t.Errorf("crash %d: signature %s title %q %d frames; want %s, crash_segv", i, m.Signature, m.Title, len(m.Backtrace), first.Signature)
		}
		if len(m.Cmdline) == 0 || m.Exe == "" {
			t.Errorf("crash %d: cmdline %q exe %q: the refused crash's process was not read", i, m.Cmdline, m.Exe)
		}
	}
	a.waitLine(t, "crash collected", first.ID)
	for range 50 {
		if m := n.WaitBundle(first.PID); m.Dedup != nil && m.Dedup.Count == 5 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("the first bundle does not count the 5 crashes of its bug: %+v", n.WaitBundle(first.PID).Dedup)
}

// crashes runs n crashers, up to 4 at once, calling during(i) before the
// i-th, and returns their pids.
func crashes(t *testing.T, exe string, n int, during func(i int)) []int {
	t.Helper()
	pids := make([]int, n)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i := range n {
		during(i)
		sem <- struct{}{}
		cmd := exec.Command(exe, "segv")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pids[i] = cmd.Process.Pid
		wg.Go(func() { cmd.Wait(); <-sem })
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	return pids
}

// waitAll waits until every pid has a bundle and returns how many bundles
// each reason left.
func waitAll(t *testing.T, n *harness.Node, pids []int, within time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		by := map[int]*bundle.Metadata{}
		for _, m := range n.Bundles() {
			by[m.PID] = m
		}
		reasons, lost := map[string]int{}, 0
		for _, pid := range pids {
			if m := by[pid]; m != nil {
				reasons[m.Core.TruncateReason]++
			} else {
				lost++
			}
		}
		if lost == 0 {
			return reasons
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d crashes have no bundle after %s (bundles by reason: %v)", lost, len(pids), within, reasons)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestSocketIntakeRestarts: the agent's worker SIGKILLed during a run of
// crashes, then the whole agent stopped (SIGTERM) and started again
// during another: every crash has a bundle (a crash the killed worker
// held gets its "missing" record from the next worker).
func TestSocketIntakeRestarts(t *testing.T) {
	n, a, socket, _, _ := intakeNode(t, "rst", "observer:\n  missing_after: 3s\n")
	exe := buildSignals(t, n.Dir)
	line := a.waitLine(t, "agent worker started")
	var worker int
	if _, err := fmt.Sscanf(line[strings.Index(line, `"worker_pid":`):], `"worker_pid":%d`, &worker); err != nil {
		t.Fatalf("no worker pid in %q", line)
	}
	pids := crashes(t, exe, 40, func(i int) {
		if i == 15 {
			syscall.Kill(worker, syscall.SIGKILL)
		}
	})
	a.waitLine(t, "agent worker exited; restarting it")
	t.Logf("worker killed: %v", waitAll(t, n, pids, 60*time.Second))

	more := crashes(t, exe, 40, func(i int) {
		if i == 15 {
			a.cmd.Process.Signal(syscall.SIGTERM)
			a.cmd.Wait()
			a = startAgent(t, n, socket)
		}
	})
	t.Logf("agent restarted: %v", waitAll(t, n, more, 60*time.Second))
}
