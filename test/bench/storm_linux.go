package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// helpersOnly installs the pipe helper without an agent (the helper per
// crash, as before the coredump socket); stop uninstalls it.
func helpersOnly(bin, work, extra string) (cfg string, stop func(), err error) {
	cfg = filepath.Join(work, "config.yaml")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("store: file://%s/store\nspool: %s/s\nsocket: %s/agent.sock\n%s", work, work, work, extra)), 0o644); err != nil {
		return "", nil, err
	}
	if err := installCorecatch(bin, cfg); err != nil {
		return "", nil, err
	}
	return cfg, func() { exec.Command(bin, "--config", cfg, "uninstall").Run() }, nil
}

// workerPID reads the agent worker's pid from the agent's log.
func workerPID(log string) int {
	data, _ := os.ReadFile(log)
	i := strings.LastIndex(string(data), `"worker_pid":`)
	if i < 0 {
		return 0
	}
	var pid int
	fmt.Sscanf(string(data[i:]), `"worker_pid":%d`, &pid)
	return pid
}

// procCPU is a process's CPU time so far (user and system), in seconds.
func procCPU(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// procHWM is a process's peak RSS in bytes.
func procHWM(pid int) int64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb << 10
		}
	}
	return 0
}

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
	tenbugs := filepath.Join(dir, "tenbugs")
	if out, err := exec.Command("gcc", "-g", "-O0", "-fno-omit-frame-pointer", "-o", tenbugs,
		filepath.Join(harness.RepoRoot(), "test", "crashers", "tenbugs.c")).CombinedOutput(); err != nil {
		return fmt.Errorf("build crasher: %v\n%s", err, out)
	}
	bugs := 1
	crash := func(cfg string, count int, every time.Duration) ([]*bundle.Metadata, error) {
		var wg sync.WaitGroup
		for i := range count {
			cmd := exec.Command(crasher, strconv.Itoa(mib), "fill")
			if bugs > 1 {
				cmd = exec.Command(tenbugs, strconv.Itoa(mib), strconv.Itoa(i%bugs))
			}
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
	// The helper per crash (intake: pipe) against the agent taking the
	// cores over the coredump socket, in the same run.
	cfg, stop, err := helpersOnly(bin, filepath.Join(dir, "one"), "") // not s1, the socket storm's
	if err != nil {
		return err
	}
	one, err := crash(cfg, 1, 0)
	stop()
	if err != nil {
		return err
	}
	single := one[0].Collector
	fmt.Printf("\nsingle crash through the pipe helper, no agent: helper CPU %.0f ms, crasher held %.1f ms\n", single.CPUSeconds*1000, single.HeldSeconds*1000)
	for _, run := range []struct {
		intake string
		bugs   int
	}{{"helper", 1}, {"socket", 1}, {"helper", 10}, {"socket", 10}} {
		intake := run.intake
		bugs = run.bugs
		work := filepath.Join(dir, fmt.Sprintf("%c%d", intake[0], bugs)) // core_pattern holds the spool path: keep it short
		if intake == "helper" {
			cfg, stop, err = helpersOnly(bin, work, "")
		} else {
			cfg, stop, err = startAgent(bin, work, "coredump_socket: "+filepath.Join(work, "core.sock")+"\nobserver:\n  missing_after: 5s\n")
		}
		if err != nil {
			return err
		}
		worker := workerPID(filepath.Join(work, "agent.log"))
		cpu0 := procCPU(worker)
		start := time.Now()
		list, err := crash(cfg, n, d/time.Duration(n))
		took := time.Since(start)
		agentCPU, rss := procCPU(worker)-cpu0, procHWM(worker)
		stop()
		if err != nil {
			return err
		}
		cpu, raw := 0.0, int64(0)
		var held []float64
		reasons := map[string]int{}
		signed := 0
		sigs, kept := map[string]bool{}, map[string]bool{}
		for _, m := range list {
			cpu += m.Collector.CPUSeconds
			raw += m.Core.RawBytes
			held = append(held, m.Collector.HeldSeconds)
			r := m.Core.TruncateReason
			if r == "" {
				r = "stored"
			}
			reasons[r]++
			if m.Signature != "" && len(m.Backtrace) > 0 {
				signed++
			}
			sigs[m.Signature] = true
			if r == "stored" {
				kept[m.Signature] = true
			}
		}
		sort.Float64s(held)
		med, p99 := held[len(held)/2], held[min(len(held)-1, len(held)*99/100)]
		fmt.Printf("\nstorm, intake %s: %d crashes of %d bug(s) in one binary (%d MiB core) in %.1fs (bundles: %v; %d with signature and backtrace; %d signatures, %d with a core kept; dumps skipped: %d)\n",
			intake, n, bugs, mib, took.Seconds(), reasons, signed, len(sigs), len(kept), reasons[bundle.ReasonMissing])
		fmt.Printf("  CPU: helpers %.2fs + agent %.2fs = %.1f ms per crash (a single helper: %.0f ms); agent peak RSS %.0f MiB\n",
			cpu, agentCPU, 1000*(cpu+agentCPU)/float64(n), single.CPUSeconds*1000, float64(rss)/(1<<20))
		fmt.Printf("  the kernel dumped %.1f MiB in all (%.2f cores); crasher held: median %.1f ms = %.2f x single, p99 %.1f ms\n",
			float64(raw)/(1<<20), float64(raw)/float64(max(one[0].Core.RawBytes, 1)), med*1000, med/single.HeldSeconds, p99*1000)
	}
	return nil
}
