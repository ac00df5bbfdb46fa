package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/corecatch/corecatch/pkg/observer"
	"github.com/corecatch/corecatch/test/harness"
)

// benchObserver measures the observer's cost on the signal path (a storm of
// handled signals with and without it attached, as a ratio) and whether it
// delivers every event of a burst of crashing processes.
func benchObserver(dir string, storm, burst int) error {
	build := func(name string) (string, error) {
		exe := filepath.Join(dir, name)
		src := filepath.Join(harness.RepoRoot(), "test", "crashers", name+".c")
		if out, err := exec.Command("gcc", "-O2", "-o", exe, src).CombinedOutput(); err != nil {
			return "", fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
		return exe, nil
	}
	stormExe, err := build("sigstorm")
	if err != nil {
		return err
	}
	burstExe, err := build("burst")
	if err != nil {
		return err
	}
	// No dumps in this part: a file pattern with the burst's RLIMIT_CORE 0.
	if err := os.WriteFile("/proc/sys/kernel/core_pattern", []byte("core"), 0o644); err != nil {
		return err
	}

	// The VM's noise is larger than the effect: rounds alternate, each
	// pair gives a ratio of CPU time (user + system: the programs run in
	// the signalling process), and the median ratio is reported.
	const rounds = 7
	var without, with, ratios []float64
	fmt.Printf("\nobserver: %d handled SIGUSR1 signals, %d rounds each, interleaved; CPU seconds\n", storm, rounds)
	for i := 0; i < rounds; i++ {
		t, err := stormOnce(stormExe, storm)
		if err != nil {
			return err
		}
		without = append(without, t)
		ob, err := observer.Load(observer.Options{})
		if err != nil {
			return err
		}
		t, err = stormOnce(stormExe, storm)
		ob.Close()
		if err != nil {
			return err
		}
		with = append(with, t)
		ratios = append(ratios, with[i]/without[i])
		fmt.Printf("  round %d: without %.3fs, with %.3fs, ratio %.3f\n", i+1, without[i], with[i], ratios[i])
	}
	r := medianF(ratios)
	fmt.Printf("signal storm, attached / detached:  %.3f  (target <= 1.05: %s)\n", r, verdict(r <= 1.05))

	ob, err := observer.Load(observer.Options{})
	if err != nil {
		return err
	}
	defer ob.Close()
	start := time.Now()
	out, err := exec.Command(burstExe, strconv.Itoa(burst)).Output()
	if err != nil {
		return fmt.Errorf("burst: %w", err)
	}
	pids := map[int]bool{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if pid, err := strconv.Atoi(sc.Text()); err == nil {
			pids[pid] = true
		}
	}
	seen, exits := map[int]bool{}, map[int]bool{}
	timeout := time.After(10 * time.Second)
collect:
	for len(exits) < len(pids) {
		select {
		case ev := <-ob.Events():
			if !pids[ev.TGID] {
				continue
			}
			switch ev.Kind {
			case observer.KindCore:
				seen[ev.TGID] = true
			case observer.KindExit:
				exits[ev.TGID] = true
			}
		case <-timeout:
			break collect
		}
	}
	st := ob.Stats()
	missing := len(pids) - len(seen)
	fmt.Printf("burst of %d crashing processes (%s, %d CPUs): %d core events, %d exit events; lost in the kernel %d, dropped by the reader %d\n",
		len(pids), time.Since(start).Round(time.Millisecond), runtime.NumCPU(), len(seen), len(exits), st.Lost, st.Dropped)
	accounted := uint64(missing) <= st.Lost+st.Dropped
	fmt.Printf("every event delivered, or counted as lost: %s\n", verdict(accounted))
	return nil
}

// stormOnce runs sigstorm, pinned to one CPU so that both sides of the
// ratio run alike, and returns the CPU seconds it used.
func stormOnce(exe string, n int) (float64, error) {
	cmd := exec.Command("taskset", "-c", "1", exe, strconv.Itoa(n))
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("sigstorm: %w", err)
	}
	if f := strings.Fields(string(out)); len(f) != 2 || f[1] != strconv.Itoa(n) {
		return 0, fmt.Errorf("sigstorm said %q", out)
	}
	return (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds(), nil
}

func medianF(x []float64) float64 {
	c := append([]float64(nil), x...)
	sort.Float64s(c)
	return c[len(c)/2]
}
