package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// benchStorm crashes one binary n times in d, as a crash loop does, with
// the agent running and default settings (dedup, rate limits), and reports
// what the storm cost against a single crash of the same binary: the
// helpers' total CPU time, and how long the kernel held each crasher. The
// crasher touches mib MiB.
func benchStorm(dir, bin string, n int, d time.Duration, mib int) error {
	crasher := filepath.Join(dir, "lim_mem")
	if out, err := exec.Command("gcc", "-g", "-O0", "-fno-omit-frame-pointer", "-o", crasher,
		filepath.Join(harness.RepoRoot(), "test", "crashers", "lim_mem.c")).CombinedOutput(); err != nil {
		return fmt.Errorf("build crasher: %v\n%s", err, out)
	}
	crash := func(cfg string, count int, every time.Duration) ([]*bundle.Metadata, error) {
		var wg sync.WaitGroup
		for range count {
			cmd := exec.Command(crasher, strconv.Itoa(mib), "fill")
			if err := cmd.Start(); err != nil {
				return nil, err
			}
			wg.Go(func() { cmd.Wait() })
			time.Sleep(every)
		}
		wg.Wait()
		var list []*bundle.Metadata
		err := waitFor(func() bool {
			out, err := exec.Command(bin, "--config", cfg, "ls", "--json").Output()
			list = nil
			return err == nil && json.Unmarshal(out, &list) == nil && len(list) >= count
		})
		if err != nil {
			return nil, fmt.Errorf("%d of %d bundles: %w", len(list), count, err)
		}
		return list, nil
	}
	cfg, stop, err := startAgent(bin, filepath.Join(dir, "s1"), "")
	if err != nil {
		return err
	}
	one, err := crash(cfg, 1, 0)
	stop()
	if err != nil {
		return err
	}
	single := one[0].Collector
	cfg, stop, err = startAgent(bin, filepath.Join(dir, "s2"), "")
	if err != nil {
		return err
	}
	defer stop()
	start := time.Now()
	list, err := crash(cfg, n, d/time.Duration(n))
	if err != nil {
		return err
	}
	took := time.Since(start)
	var cpu float64
	var held []float64
	reasons := map[string]int{}
	for _, m := range list {
		cpu += m.Collector.CPUSeconds
		held = append(held, m.Collector.HeldSeconds)
		r := m.Core.TruncateReason
		if r == "" {
			r = "stored"
		}
		reasons[r]++
	}
	sort.Float64s(held)
	med, p99 := held[len(held)/2], held[min(len(held)-1, len(held)*99/100)]
	fmt.Printf("\nstorm: %d crashes of one binary (%d MiB core) in %.1fs (bundles: %v)\n", n, mib, took.Seconds(), reasons)
	fmt.Printf("single crash: helper CPU %.0f ms, crasher held %.1f ms\n", single.CPUSeconds*1000, single.HeldSeconds*1000)
	fmt.Printf("storm helpers' total CPU %.2fs = %.1f single crashes for %d crashes (%.0f%% of %d separate ones)\n",
		cpu, cpu/single.CPUSeconds, n, 100*cpu/single.CPUSeconds/float64(n), n)
	fmt.Printf("crasher held: median %.1f ms = %.2f x single, p99 %.1f ms = %.2f x single\n",
		med*1000, med/single.HeldSeconds, p99*1000, p99/single.HeldSeconds)
	return nil
}
