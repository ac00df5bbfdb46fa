package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// benchHold measures how long the kernel holds a crashing process of mib
// MiB whose crash the agent refuses as a duplicate over the coredump
// socket, against the same process crashing with no dump at all (a file
// pattern and RLIMIT_CORE 0, as on a node without a collector): from the
// crasher's own clock just before it faults to its exit as the bench's
// wait (waitid on a pidfd) sees it. The fill of its memory is not counted.
// The two are interleaved, runs of each.
func benchHold(dir, bin string, mib, runs int) error {
	crasher := filepath.Join(dir, "lim_mem")
	if out, err := exec.Command("gcc", "-g", "-O0", "-fno-omit-frame-pointer", "-o", crasher,
		filepath.Join(harness.RepoRoot(), "test", "crashers", "lim_mem.c")).CombinedOutput(); err != nil {
		return fmt.Errorf("build crasher: %v\n%s", err, out)
	}
	// RLIMIT_CORE 0 for the crashers (inherited): the file pattern then
	// dumps nothing; the coredump socket ignores it, as a pipe does.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err != nil {
		return err
	}
	soft := lim
	soft.Cur = 0
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &soft); err != nil {
		return err
	}
	defer unix.Setrlimit(unix.RLIMIT_CORE, &lim)

	work := filepath.Join(dir, "h")
	cfg, stop, err := startAgent(bin, work, "coredump_socket: "+filepath.Join(work, "core.sock")+"\n")
	if err != nil {
		return err
	}
	defer stop()
	pattern, err := os.ReadFile("/proc/sys/kernel/core_pattern")
	if err != nil {
		return err
	}
	setPattern := func(p []byte) error { return os.WriteFile("/proc/sys/kernel/core_pattern", p, 0o644) }
	defer setPattern(pattern) // the agent restores its predecessor's from it
	// crash runs the crasher once (in cgroup, a directory, when set) and
	// returns how long it was held.
	crash := func(cgroup string) (time.Duration, int, error) {
		cmd := exec.Command(crasher, strconv.Itoa(mib), "fill")
		if cgroup != "" {
			cmd = exec.Command("sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cgroup, crasher, strconv.Itoa(mib), "fill")
		}
		cmd.Dir = work
		stderr, err := cmd.StderrPipe()
		if err != nil {
			return 0, 0, err
		}
		if err := cmd.Start(); err != nil {
			return 0, 0, err
		}
		line, _ := bufio.NewReader(stderr).ReadString('\n')
		cmd.Wait()
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		f := strings.Fields(line)
		if len(f) != 3 || f[1] != "ready" {
			return 0, 0, fmt.Errorf("lim_mem said %q (%v)", line, cmd.ProcessState)
		}
		t0, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return 0, 0, err
		}
		return time.Duration(ts.Nano() - t0), cmd.Process.Pid, nil
	}
	// measure interleaves runs crashes of each kind in cgroup. A first
	// crash there keeps its bug's core, or is itself refused as a
	// duplicate of a kept one (a container's cgroup may name its bug's
	// key apart); the later ones are refused as duplicates of that core.
	type held struct{ refused, none, bundled, frozen []float64 }
	// crashBundle crashes once and returns the hold and the crash's bundle.
	crashBundle := func(cgroup string) (time.Duration, *bundle.Metadata, error) {
		d, pid, err := crash(cgroup)
		if err != nil {
			return 0, nil, err
		}
		m, err := waitBundle(bin, cfg, pid)
		return d, m, err
	}
	measure := func(cgroup string) (h held, err error) {
		_, first, err := crashBundle(cgroup)
		if err != nil {
			return h, err
		}
		of := first.ID
		if first.Dedup != nil && first.Dedup.Of != "" {
			of = first.Dedup.Of
		}
		for range runs {
			if err := setPattern([]byte("core")); err != nil {
				return h, err
			}
			d, _, err := crash(cgroup)
			if err != nil {
				return h, err
			}
			h.none = append(h.none, d.Seconds())
			if err := setPattern(pattern); err != nil {
				return h, err
			}
			d, m, err := crashBundle(cgroup)
			if err != nil {
				return h, err
			}
			if m.Core.TruncateReason != bundle.ReasonDedup || m.Dedup == nil || m.Dedup.Of != of || m.Signature == "" || len(m.Backtrace) == 0 {
				return h, fmt.Errorf("crash of pid %d was not refused as a duplicate of %s with signature and backtrace: core %+v, dedup %+v, signature %q",
					m.PID, of, m.Core, m.Dedup, m.Signature)
			}
			h.refused = append(h.refused, d.Seconds())
			h.bundled = append(h.bundled, m.Collector.HeldSeconds)
			if m.Freeze != nil && m.Freeze.Frozen {
				h.frozen = append(h.frozen, m.Freeze.LatencyMS/1000)
			}
		}
		return h, nil
	}
	host, err := measure("")
	if err != nil {
		return err
	}
	pct := func(s []float64, p float64) float64 {
		if len(s) == 0 {
			return 0
		}
		c := append([]float64(nil), s...)
		sort.Float64s(c)
		return c[int(p*float64(len(c)-1)+0.5)]
	}
	fmt.Printf("\nhold: a %d MiB crasher, from its fault to its exit, %d runs each, interleaved\n", mib, runs)
	fmt.Printf("  refused as a duplicate (coredump socket): median %.1f ms, p90 %.1f ms (the agent's own record, from its collection's start at the eBPF event to the answer: median %.1f ms)\n",
		1000*pct(host.refused, 0.5), 1000*pct(host.refused, 0.9), 1000*pct(host.bundled, 0.5))
	fmt.Printf("  no dump at all (file pattern, RLIMIT_CORE 0): median %.1f ms, p90 %.1f ms\n", 1000*pct(host.none, 0.5), 1000*pct(host.none, 0.9))
	r := pct(host.refused, 0.5) / pct(host.none, 0.5)
	fmt.Printf("  duplicate / no dump: %.2fx median, %.2fx p90  (target <= 1.3x: %s)\n", r, pct(host.refused, 0.9)/pct(host.none, 0.9), verdict(r <= 1.3))

	// The same in a container's cgroup, which the agent freezes: the
	// decision does not wait for the freeze.
	cg, cleanup, err := benchContainer()
	if err != nil {
		return err
	}
	defer cleanup()
	ctr, err := measure(cg)
	if err != nil {
		return err
	}
	fmt.Printf("  in a container cgroup the agent freezes (frozen in %d of %d, signal to frozen median %.1f ms): refused %.1f ms median, no dump %.1f ms, %.2fx (agent's record %.1f ms)\n",
		len(ctr.frozen), runs, 1000*pct(ctr.frozen, 0.5), 1000*pct(ctr.refused, 0.5), 1000*pct(ctr.none, 0.5),
		pct(ctr.refused, 0.5)/pct(ctr.none, 0.5), 1000*pct(ctr.bundled, 0.5))
	return nil
}
