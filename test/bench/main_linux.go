// Command bench measures what a crash costs under corecatch against baselines
// measured in the same run, on the same crasher: the kernel's own dump speed
// (cat > /dev/null), the zstd CLI, and the shell helper corecatch replaces.
// It prints ratios, never absolute pass/fail timings, plus the helper's peak
// memory and disk writes. Run as root: `sudo make bench`.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// helper is one core_pattern handler under test.
type helper struct {
	name    string
	pattern func(dir string) string
	// stored returns the bytes the helper kept for the last crash, and a
	// bundle's metadata when it has one; it waits until the helper is done.
	stored func(dir string, pid int) (int64, *bundle.Metadata, error)
}

type sample struct {
	wall   time.Duration
	stored int64
	meta   *bundle.Metadata
}

func main() {
	size := flag.Int("size", 1024, "MiB the crasher maps (bigcrash.c argument)")
	runs := flag.Int("runs", 3, "crashes per helper; the median is reported")
	shared := flag.String("shared", filepath.Join(harness.RepoRoot(), "..", "shared"), "the shared/ directory with bench/bigcrash.c and bench/seed_helper.sh")
	only := flag.String("only", "", "run one part: collect, observer, freeze, storm, hold, upload, pull, hostile or list")
	uploadSize := flag.Int("upload-size", 2048, "MiB of the bundle whose upload is measured")
	pullSize := flag.Int("pull-size", 2048, "MiB of the core.zst whose pull is measured")
	crashes := flag.Int("freeze-crashes", 50, "crashes whose freeze latency is measured")
	holds := flag.Int("hold-runs", 10, "crashes of each kind whose hold is measured")
	storm := flag.Int("storm", 1000000, "handled signals in the observer's signal storm")
	burst := flag.Int("burst", 1000, "crashing processes in the observer's burst")
	flag.Parse()
	if err := run(*size, *runs, *shared, *only, *storm, *burst, *crashes, *holds, *uploadSize, *pullSize); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(size, runs int, shared, only string, storm, burst, crashes, holds, uploadSize, pullSize int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("bench sets kernel.core_pattern: run it as root (sudo make bench)")
	}
	unlock, err := harness.LockKernel()
	if err != nil {
		return err
	}
	defer unlock()
	restore, err := harness.SaveKernel()
	if err != nil {
		return err
	}
	defer func() {
		if err := restore(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("/var/tmp", "ccbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "corecatch")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/corecatch")
	build.Dir = harness.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build corecatch: %v\n%s", err, out)
	}
	if only == "" || only == "observer" {
		if err := benchObserver(dir, storm, burst); err != nil {
			return fmt.Errorf("observer: %w", err)
		}
	}
	if only == "" || only == "freeze" {
		if err := benchFreeze(dir, bin, crashes); err != nil {
			return fmt.Errorf("freeze: %w", err)
		}
	}
	if only == "" || only == "storm" {
		if err := benchStorm(dir, bin, 300, 10*time.Second, 16); err != nil {
			return fmt.Errorf("storm: %w", err)
		}
	}
	if only == "" || only == "hold" {
		if err := benchHold(dir, bin, size, holds); err != nil {
			return fmt.Errorf("hold: %w", err)
		}
	}
	if only == "" || only == "hostile" {
		if err := benchHostile(dir, bin); err != nil {
			return fmt.Errorf("hostile: %w", err)
		}
	}
	if only == "" || only == "upload" {
		if err := benchUpload(dir, bin, uploadSize); err != nil {
			return fmt.Errorf("upload: %w", err)
		}
	}
	if only == "" || only == "pull" {
		if err := benchPull(dir, bin, pullSize, runs); err != nil {
			return fmt.Errorf("pull: %w", err)
		}
	}
	if only == "" || only == "list" {
		if err := benchList(dir, bin, *listBundles, 1000, *listScan); err != nil {
			return fmt.Errorf("list: %w", err)
		}
	}
	if only != "" && only != "collect" {
		return nil
	}
	crasher := filepath.Join(dir, "bigcrash")
	if out, err := exec.Command("gcc", "-O2", "-o", crasher, filepath.Join(shared, "bench", "bigcrash.c")).CombinedOutput(); err != nil {
		return fmt.Errorf("build bigcrash: %v\n%s", err, out)
	}
	helpers, err := setupHelpers(dir, bin, filepath.Join(shared, "bench", "seed_helper.sh"))
	if err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/kernel/core_pipe_limit", []byte("4"), 0o644); err != nil {
		return err
	}

	results := map[string][]sample{}
	fmt.Printf("crasher: bigcrash.c %d (%d runs per helper, interleaved; median shown)\n", size, runs)
	for i := 0; i < runs; i++ {
		for _, h := range helpers {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s, err := crashOnce(ctx, h, dir, crasher, size)
			if err != nil {
				return fmt.Errorf("%s: %w", h.name, err)
			}
			fmt.Printf("  run %d %-16s wall %6.2fs stored %s\n", i+1, h.name, s.wall.Seconds(), mb(s.stored))
			results[h.name] = append(results[h.name], s)
		}
	}
	report(results, helpers)
	return nil
}

func setupHelpers(dir, bin, seed string) ([]helper, error) {
	script := func(name, body string) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755)
	}
	devnull, err := script("devnull.sh", "exec cat > /dev/null")
	if err != nil {
		return nil, err
	}
	zst, err := script("zstd.sh", fmt.Sprintf("exec zstd -q -1 -T2 > %s/zstd.$1.zst", dir))
	if err != nil {
		return nil, err
	}
	seedWrap, err := script("seed.sh", fmt.Sprintf("SEED_STORE=%s/seed exec %s \"$1\"", dir, seed))
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "config.yaml")
	// Every run stores its core, as the other helpers do: one core per bug
	// would keep only the first run's.
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("store: file://%s/store\nspool: %s/spool\ndedup:\n  window: \"0\"\n", dir, dir)), 0o644); err != nil {
		return nil, err
	}
	// fileSize waits until no process has the crash's needle in its
	// command line any more, then returns the size of the helper's output.
	fileSize := func(glob, needle string) func(string, int) (int64, *bundle.Metadata, error) {
		return func(dir string, pid int) (int64, *bundle.Metadata, error) {
			var size int64
			err := waitFor(func() bool {
				m, _ := filepath.Glob(filepath.Join(dir, fmt.Sprintf(glob, pid)))
				if len(m) == 0 || running(fmt.Sprintf(needle, pid)) {
					return false
				}
				st, err := os.Stat(m[0])
				size = st.Size()
				return err == nil
			})
			return size, nil, err
		}
	}
	return []helper{
		{name: "cat >/dev/null", pattern: func(string) string { return "|" + devnull },
			stored: func(string, int) (int64, *bundle.Metadata, error) { return 0, nil, nil }},
		{name: "zstd -1 -T2", pattern: func(string) string { return "|" + zst + " %P" },
			stored: fileSize("zstd.%d.zst", "zstd.sh\x00%d\x00")},
		{name: "seed_helper.sh", pattern: func(string) string { return "|" + seedWrap + " core_%h_exe_%e_pid_%p_sig_%s_time_%t.gz" },
			stored: fileSize("seed/core_*_pid_%d_*.tgz", "_pid_%d_")},
		{name: "corecatch", pattern: func(string) string { return "" },
			stored: func(dir string, pid int) (int64, *bundle.Metadata, error) {
				meta, err := waitBundle(bin, cfg, pid)
				if meta == nil {
					return 0, nil, err
				}
				n := meta.Core.StoredBytes
				for _, f := range meta.Files {
					if f.Stored != "" {
						n += f.Size
					}
				}
				return n, meta, err
			}},
	}, installCorecatch(bin, cfg)
}

// installCorecatch runs `corecatch install` once, so that its pattern and
// snapshot exist; crashOnce then re-applies the pattern it read back.
func installCorecatch(bin, cfg string) error {
	if out, err := exec.Command(bin, "--config", cfg, "install").CombinedOutput(); err != nil {
		return fmt.Errorf("corecatch install: %v\n%s", err, out)
	}
	data, err := os.ReadFile("/proc/sys/kernel/core_pattern")
	corecatchPattern = strings.TrimSpace(string(data))
	return err
}

var corecatchPattern string

// crashOnce sets the helper's pattern, crashes bigcrash and measures its
// wall time from "ready" (memory filled) until the kernel let it go.
func crashOnce(ctx context.Context, h helper, dir, crasher string, size int) (sample, error) {
	pattern := h.pattern(dir)
	if pattern == "" {
		pattern = corecatchPattern
	}
	if err := os.WriteFile("/proc/sys/kernel/core_pattern", []byte(pattern), 0o644); err != nil {
		return sample{}, err
	}
	cmd := exec.CommandContext(ctx, crasher, fmt.Sprint(size))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return sample{}, err
	}
	if err := cmd.Start(); err != nil {
		return sample{}, err
	}
	line, _ := bufio.NewReader(stderr).ReadString('\n')
	t0 := time.Now()
	if !strings.Contains(line, "ready") {
		cmd.Wait()
		return sample{}, fmt.Errorf("bigcrash said %q", line)
	}
	cmd.Wait()
	wall := time.Since(t0)
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.CoreDump() {
		return sample{}, fmt.Errorf("bigcrash ended with %v, no core", cmd.ProcessState)
	}
	stored, meta, err := h.stored(dir, cmd.Process.Pid)
	if err != nil {
		return sample{}, err
	}
	exec.Command("sync").Run()
	return sample{wall: wall, stored: stored, meta: meta}, nil
}

// running reports whether any process has needle in its command line: a
// helper (or a child such as the seed helper's tar) still at work.
func running(needle string) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if data, err := os.ReadFile(p); err == nil && strings.Contains(string(data), needle) {
			return true
		}
	}
	return false
}

func waitFor(cond func() bool) error {
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		if cond() {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("helper did not finish within 5 minutes")
}

func median(s []sample) sample {
	c := append([]sample(nil), s...)
	sort.Slice(c, func(i, j int) bool { return c[i].wall < c[j].wall })
	return c[len(c)/2]
}

func mb(n int64) string { return fmt.Sprintf("%.0f MB", float64(n)/1e6) }

func report(results map[string][]sample, helpers []helper) {
	cc := median(results["corecatch"])
	fmt.Printf("\n%-16s %9s %10s %s\n", "helper", "wall", "stored", "corecatch wall / helper wall")
	for _, h := range helpers {
		m := median(results[h.name])
		fmt.Printf("%-16s %8.2fs %10s %8.2f\n", h.name, m.wall.Seconds(), mb(m.stored), cc.wall.Seconds()/m.wall.Seconds())
	}
	zstdWall := median(results["zstd -1 -T2"]).wall.Seconds()
	seedWall := median(results["seed_helper.sh"]).wall.Seconds()
	devWall := median(results["cat >/dev/null"]).wall.Seconds()
	fmt.Println()
	r := cc.wall.Seconds() / zstdWall
	fmt.Printf("corecatch / zstd -1 -T2:      %.2f   (target <= 1.0: %s)\n", r, verdict(r <= 1.0))
	fmt.Printf("corecatch / cat > /dev/null:  %.2f   (the kernel's own dump speed; reported)\n", cc.wall.Seconds()/devWall)
	s := seedWall / cc.wall.Seconds()
	fmt.Printf("seed_helper.sh / corecatch:   %.1fx  (target >= 8x faster: %s)\n", s, verdict(s >= 8))
	var rss, writes int64
	var held float64
	for _, x := range results["corecatch"] {
		rss = max(rss, x.meta.Collector.MaxRSSBytes)
		writes = max(writes, x.meta.Collector.DiskWriteBytes)
		held = max(held, x.meta.Collector.HeldSeconds)
	}
	fmt.Printf("helper peak RSS:              %.1f MiB (target <= 64 MiB: %s)\n", float64(rss)/(1<<20), verdict(rss <= 64<<20))
	w := float64(cc.meta.Collector.DiskWriteBytes) / float64(cc.stored)
	fmt.Printf("helper disk writes / stored:  %.3f (%s of %s; target <= 1.05: %s)\n", w, mb(cc.meta.Collector.DiskWriteBytes), mb(cc.stored), verdict(w <= 1.05))
	fmt.Printf("core: %s raw -> %s stored; helper held the crasher at most %.2fs\n", mb(cc.meta.Core.RawBytes), mb(cc.meta.Core.StoredBytes), held)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}
