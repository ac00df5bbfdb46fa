package freezer

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corecatch/corecatch/test/harness"
)

// testPolicy allows exactly the cgroups testCgroup makes.
func testPolicy() Policy {
	return Policy{Allow: []*regexp.Regexp{regexp.MustCompile(`^/corecatch-test-[0-9]+$`)}}
}

// testFreezer returns a Freezer on the machine's cgroups and the hierarchy
// of mode, skipping the test when the machine has no such hierarchy.
func testFreezer(t *testing.T, stateDir, mode string) (*Freezer, *hierarchy) {
	t.Helper()
	f, err := New(Options{StateDir: stateDir, Policy: testPolicy()})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range f.hiers {
		if h.mode == mode {
			removeHold(t, h)
			return f, h
		}
	}
	t.Skipf("no cgroup %s freezer on this machine", mode)
	return nil, nil
}

// removeHold removes the holding cgroup when the test ends, unless it was
// there before (an agent of this machine uses it).
func removeHold(t *testing.T, h *hierarchy) {
	hold := filepath.Join(h.root, holdName)
	if exists(hold) {
		return
	}
	t.Cleanup(func() { removeCgroup(t, hold) })
}

// testCgroup makes a cgroup that testPolicy allows and returns its path and
// directory. When the test ends, it is thawed, its processes killed and it
// is removed.
func testCgroup(t *testing.T, h *hierarchy) (string, string) {
	t.Helper()
	dir, err := os.MkdirTemp(h.root, "corecatch-test-")
	if err != nil {
		t.Fatalf("create a %s cgroup: %v", h.mode, err)
	}
	t.Cleanup(func() {
		if err := thaw(h, dir); err != nil {
			t.Errorf("thaw %s: %v", dir, err)
		}
		removeCgroup(t, dir)
	})
	return "/" + filepath.Base(dir), dir
}

// removeCgroup kills what is left in a cgroup and removes it.
func removeCgroup(t *testing.T, dir string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		for _, p := range strings.Fields(string(procs)) {
			pid, _ := strconv.Atoi(p)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("remove cgroup %s: %v", dir, err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// start runs a command inside the cgroup at dir with an unlimited
// RLIMIT_CORE. When the test ends the cgroup is thawed (a v1-frozen
// process dies of SIGKILL only once thawed) and the process killed.
func start(t *testing.T, h *hierarchy, dir string, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sh", append([]string{"-c",
		`echo $$ > "$0/cgroup.procs" && exec "$@"`, dir}, argv...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		thaw(h, dir)
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitFor(t, 5*time.Second, fmt.Sprintf("process %d in cgroup %s", cmd.Process.Pid, dir), func() bool {
		return inCgroup(dir, cmd.Process.Pid)
	})
	return cmd
}

func inCgroup(dir string, pid int) bool {
	procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	return slices.Contains(strings.Fields(string(procs)), strconv.Itoa(pid))
}

// isFrozen reads the cgroup's state the way the kernel reports it.
func isFrozen(t *testing.T, h *hierarchy, dir string) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, h.watch))
	if err != nil {
		t.Fatal(err)
	}
	return h.frozenContent(string(data))
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %v", what, d)
		}
	}
}

// readInt reads a number a process writes into a file, 0 while there is none.
func readInt(name string) int64 {
	data, _ := os.ReadFile(name)
	n, _ := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return n
}

func records(t *testing.T, stateDir string) []string {
	t.Helper()
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// slowHelper is a core_pattern pipe helper that reads the core at about
// 64 MiB/s (4 MiB reads, forks included), so a freeze lands mid-dump. For
// crasher PID it keeps head.PID (the core's first 64 KiB: ELF and program
// headers), progress.PID (bytes so far) and, once the core ended, size.PID
// (bytes in all).
const slowHelper = `#!/bin/sh
d=$(dirname "$0")
put() { echo "$2" > "$d/$1.tmp" && mv "$d/$1.tmp" "$d/$1"; }
dd bs=64K count=1 iflag=fullblock of="$d/head.$1" 2>/dev/null
total=$(wc -c < "$d/head.$1")
while n=$(dd bs=4M count=1 iflag=fullblock 2>/dev/null | wc -c) && [ "$n" -gt 0 ]; do
	total=$((total + n))
	put "progress.$1" $total
	sleep 0.03
done
put "size.$1" $total
`

// TestFreezeKeepsCoreWhole crashes a 200 MiB process in a cgroup with a
// sibling, into a helper that reads the core slowly, freezes the cgroup
// mid-dump and checks that the sibling stopped while the core kept
// streaming, that it runs again after the thaw, and that the core arrived
// whole.
func TestFreezeKeepsCoreWhole(t *testing.T) {
	harness.Privileged(t)
	work := t.TempDir()
	// Threads waiting in the kernel while one dumps must move out too.
	limMem := harness.CC(t, work, "lim_mem", []string{"lim_mem.c", "idle_threads.c"}, "-O2", "-pthread")
	helper := filepath.Join(work, "slow.sh")
	if err := os.WriteFile(helper, []byte(slowHelper), 0o755); err != nil {
		t.Fatal(err)
	}
	for file, value := range map[string]string{"core_pipe_limit": "4", "core_pattern": "|" + helper + " %P"} {
		if err := os.WriteFile("/proc/sys/kernel/"+file, []byte(value), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, mode := range []string{"v2", "v1"} {
		t.Run(mode, func(t *testing.T) {
			stateDir := t.TempDir()
			f, h := testFreezer(t, stateDir, mode)
			cg, dir := testCgroup(t, h)
			counter := filepath.Join(t.TempDir(), "counter")
			start(t, h, dir, "/bin/sh", "-c", `i=0; while :; do i=$((i+1)); echo $i > "$0"; sleep 0.01; done`, counter)
			waitFor(t, 5*time.Second, "sibling counting", func() bool { return readInt(counter) > 2 })

			crasher := start(t, h, dir, limMem, "200", "fill")
			pid := crasher.Process.Pid
			progress := filepath.Join(work, fmt.Sprintf("progress.%d", pid))
			waitFor(t, 30*time.Second, "core streaming", func() bool { return readInt(progress) >= 16<<20 })

			fr, err := f.Freeze(cg, pid, 2*time.Second)
			if err != nil {
				t.Fatalf("Freeze: %v", err)
			}
			t.Logf("%s: frozen in %v", fr.Mode, fr.Latency)
			if fr.Mode != mode || fr.Path != cg {
				t.Errorf("Frozen is %s %s, want %s %s", fr.Mode, fr.Path, mode, cg)
			}
			if !isFrozen(t, h, dir) {
				t.Errorf("%s does not say frozen after Freeze returned", h.watch)
			}
			checkHeld(t, pid)
			if n := len(records(t, stateDir)); n != 1 {
				t.Errorf("%d records while frozen, want 1", n)
			}
			c1, p1 := readInt(counter), readInt(progress)
			time.Sleep(500 * time.Millisecond)
			c2, p2 := readInt(counter), readInt(progress)
			if c2 != c1 {
				t.Errorf("the sibling counted from %d to %d while frozen", c1, c2)
			}
			// About 32 MiB at the helper's pace; a cut core ends within a
			// pipe buffer and the helper's last 4 MiB read.
			if p2-p1 < 8<<20 {
				t.Errorf("the core stopped streaming while the cgroup was frozen: %d bytes, 500 ms later %d", p1, p2)
			}
			if p2 >= 200<<20 {
				t.Errorf("the core was nearly done (%d bytes) when checked: the freeze did not land mid-dump", p2)
			}

			if err := f.Thaw(fr); err != nil {
				t.Fatalf("Thaw: %v", err)
			}
			if err := f.Thaw(fr); err != nil {
				t.Errorf("second Thaw: %v", err)
			}
			if isFrozen(t, h, dir) {
				t.Errorf("%s says frozen after Thaw", h.watch)
			}
			waitFor(t, 2*time.Second, "sibling counting after the thaw", func() bool { return readInt(counter) > c2 })
			if recs := records(t, stateDir); len(recs) != 0 {
				t.Errorf("records after Thaw: %v", recs)
			}

			crasher.Wait()
			if ws := crasher.ProcessState.Sys().(syscall.WaitStatus); !ws.CoreDump() {
				t.Fatalf("crasher ended with %v, no core", crasher.ProcessState)
			}
			sizeFile := filepath.Join(work, fmt.Sprintf("size.%d", pid))
			waitFor(t, 30*time.Second, "helper done", func() bool { return exists(sizeFile) })
			checkCoreWhole(t, filepath.Join(work, fmt.Sprintf("head.%d", pid)), readInt(sizeFile))
		})
	}
}

// checkHeld checks that every thread of a process is in the holding cgroup.
func checkHeld(t *testing.T, pid int) {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/cgroup", pid))
	if err != nil || len(tasks) != 5 {
		t.Errorf("the crasher %d has %d threads (%v), want 5", pid, len(tasks), err)
	}
	for _, task := range tasks {
		if cgs := readFile(t, task); !strings.Contains(cgs, ":/"+holdName+"\n") {
			t.Errorf("%s: not in the holding cgroup:\n%s", task, cgs)
		}
	}
}

// checkCoreWhole checks that a core of size bytes holds all its program
// headers promise.
func checkCoreWhole(t *testing.T, headFile string, size int64) {
	t.Helper()
	head, err := os.ReadFile(headFile)
	if err != nil {
		t.Fatal(err)
	}
	core, err := elf.NewFile(bytes.NewReader(head))
	if err != nil {
		t.Fatalf("the core's headers: %v", err)
	}
	var want int64
	for _, p := range core.Progs {
		want = max(want, int64(p.Off+p.Filesz))
	}
	if size != want || size < 200<<20 {
		t.Errorf("the helper got %d bytes of core, its program headers promise %d (the crasher touched 200 MiB)", size, want)
	} else {
		t.Logf("core whole: %d bytes", size)
	}
}

// TestThawRecorded freezes a cgroup, drops the Freezer as a killed agent
// would, and checks that a new one on the same state directory thaws it
// and forgets a recorded cgroup that is gone.
func TestThawRecorded(t *testing.T) {
	harness.Privileged(t)
	for _, mode := range []string{"v2", "v1"} {
		t.Run(mode, func(t *testing.T) {
			stateDir := t.TempDir()
			f, h := testFreezer(t, stateDir, mode)
			cg, dir := testCgroup(t, h)
			start(t, h, dir, "sleep", "100")
			crasher := start(t, h, dir, "sleep", "100")
			if _, err := f.Freeze(cg, crasher.Process.Pid, 2*time.Second); err != nil {
				t.Fatalf("Freeze: %v", err)
			}
			if !isFrozen(t, h, dir) {
				t.Fatalf("%s does not say frozen after Freeze returned", h.watch)
			}

			f2, err := New(Options{StateDir: stateDir, Policy: testPolicy()})
			if err != nil {
				t.Fatal(err)
			}
			if err := f2.record(&Frozen{Mode: mode, Path: "/corecatch-test-gone"}); err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			thawed, err := f2.ThawRecorded()
			if err != nil {
				t.Errorf("ThawRecorded: %v", err)
			}
			if !slices.Equal(thawed, []string{cg}) {
				t.Errorf("ThawRecorded thawed %q, want [%s]", thawed, cg)
			}
			waitFor(t, 2*time.Second-time.Since(began), "thaw", func() bool { return !isFrozen(t, h, dir) })
			if recs := records(t, stateDir); len(recs) != 0 {
				t.Errorf("records after ThawRecorded: %v", recs)
			}
		})
	}
}

// TestFreezeV1Vfork freezes and thaws, again and again, a v1 cgroup whose
// shell vforks all the time. A vfork parent that the kernel asks to freeze
// just before it sleeps stays unfrozen, and the cgroup FREEZING, until it
// is asked again (measured: about one freeze in fifteen without that).
func TestFreezeV1Vfork(t *testing.T) {
	harness.Privileged(t)
	f, h := testFreezer(t, t.TempDir(), "v1")
	cg, dir := testCgroup(t, h)
	start(t, h, dir, "/bin/sh", "-c", "while :; do sleep 0.001; done")
	var worst time.Duration
	for i := range 150 {
		fr, err := f.find(cg)
		if err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		if err := f.freeze(fr, began.Add(time.Second)); err != nil {
			t.Fatalf("freeze %d: %v", i, err)
		}
		worst = max(worst, time.Since(began))
		if err := f.Thaw(fr); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(i%7) * time.Millisecond)
	}
	t.Logf("150 freezes, the slowest took %v", worst)
}

// fake is a Freezer on a v2 hierarchy of plain files in a temporary
// directory, with one cgroup that holds process 4242.
type fake struct {
	f                 *Freezer
	root, cg, records string
}

// newFake makes a fake whose cgroup.events says frozen (1) or not (0).
func newFake(t *testing.T, frozen string) *fake {
	fk := &fake{root: t.TempDir(), cg: "/corecatch-test-1", records: t.TempDir()}
	files := map[string]string{
		fk.cg + "/cgroup.freeze":   "0",
		fk.cg + "/cgroup.events":   "populated 1\nfrozen " + frozen + "\n",
		fk.cg + "/cgroup.procs":    "4242\n",
		holdName + "/cgroup.procs": "",
	}
	for name, data := range files {
		name = filepath.Join(fk.root, name)
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if fk.f, err = New(Options{StateDir: fk.records, Policy: testPolicy(), V2Root: fk.root}); err != nil {
		t.Fatal(err)
	}
	return fk
}

// check checks what the fake cgroup's cgroup.freeze holds, what was moved
// to the holding cgroup and how many records there are.
func (fk *fake) check(t *testing.T, when, freeze, held string, nrec int) {
	t.Helper()
	fz := readFile(t, filepath.Join(fk.root, fk.cg, "cgroup.freeze"))
	h := readFile(t, filepath.Join(fk.root, holdName, "cgroup.procs"))
	if recs := records(t, fk.records); fz != freeze || h != held || len(recs) != nrec {
		t.Errorf("%s: cgroup.freeze %q, held %q, records %v; want %q, %q, %d records", when, fz, h, recs, freeze, held, nrec)
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestFreezeTimeout freezes a cgroup that never reports frozen: Freeze
// must give up at the deadline, thaw it and leave no record.
func TestFreezeTimeout(t *testing.T) {
	fk := newFake(t, "0")
	began := time.Now()
	fr, err := fk.f.Freeze(fk.cg, 4242, 30*time.Millisecond)
	took := time.Since(began)
	if err == nil || fr != nil {
		t.Fatalf("Freeze of a cgroup that never freezes returned %v, %v; want an error", fr, err)
	}
	t.Logf("error: %v", err)
	if took < 30*time.Millisecond || took > time.Second {
		t.Errorf("Freeze gave up after %v, want 30ms", took)
	}
	fk.check(t, "after the timeout", "0", "4242", 0)
}

// TestFreezeRefusals checks that a refused freeze touches nothing: a
// cgroup the policy denies, a crasher that is not in the cgroup, a cgroup
// that does not exist.
func TestFreezeRefusals(t *testing.T) {
	fk := newFake(t, "1")
	var denied *DeniedError
	if _, err := fk.f.Freeze("/default/x", 4242, time.Second); !errors.As(err, &denied) || denied.Reason != "not a container cgroup" {
		t.Errorf("Freeze of a cgroup the policy refuses: %v, want a *DeniedError", err)
	}
	if _, err := fk.f.Freeze(fk.cg, 4343, time.Second); err == nil {
		t.Errorf("Freeze with a crasher outside the cgroup succeeded")
	}
	if _, err := fk.f.Freeze("/corecatch-test-3", 4242, time.Second); err == nil {
		t.Errorf("Freeze of a cgroup that does not exist succeeded")
	}
	fk.check(t, "after refusals", "0", "", 0)
}

// TestFreezeTwice freezes one cgroup for two crashers: it stays frozen
// until both are thawed.
func TestFreezeTwice(t *testing.T) {
	fk := newFake(t, "1")
	var frs []*Frozen
	for range 2 {
		fr, err := fk.f.Freeze(fk.cg, 4242, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		frs = append(frs, fr)
	}
	for _, fr := range []*Frozen{frs[0], frs[0]} {
		if err := fk.f.Thaw(fr); err != nil {
			t.Fatal(err)
		}
	}
	fk.check(t, "after one of two thaws, twice", "1", "4242", 1)
	if err := fk.f.Thaw(frs[1]); err != nil {
		t.Fatal(err)
	}
	fk.check(t, "after both thaws", "0", "4242", 0)
}
