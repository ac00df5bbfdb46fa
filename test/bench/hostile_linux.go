package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/corecatch/corecatch/test/harness"
	"github.com/corecatch/corecatch/test/hostile"
)

// benchHostile crashes a program whose executable carries each of
// test/hostile's symbol tables (crafted to cost a reader gigabytes) and
// reports the helper's peak RSS on each, against the same program with its
// own symbols: the target is that of every crash, 64 MiB.
func benchHostile(dir, bin string) error {
	plain := filepath.Join(dir, "signals")
	if out, err := exec.Command("gcc", "-g", "-O0", "-fno-omit-frame-pointer", "-pthread", "-o", plain,
		filepath.Join(harness.RepoRoot(), "test", "crashers", "signals.c"), "-lm").CombinedOutput(); err != nil {
		return fmt.Errorf("build crasher: %v\n%s", err, out)
	}
	data, err := os.ReadFile(plain)
	if err != nil {
		return err
	}
	// Every crash keeps its core (one build-id and signature for all),
	// and only the helper runs, with no agent to hand the core to: it is
	// the helper's memory that is measured.
	cfg, stop, err := helpersOnly(bin, filepath.Join(dir, "h"), "dedup:\n  window: \"0\"\n")
	if err != nil {
		return err
	}
	defer stop()
	fmt.Println("\nhostile symbol tables in the crashed executable:")
	var worst int64
	for _, tc := range []struct {
		name string
		kind hostile.Symbols
	}{{"own symbols", -1}, {"zstd bomb (512 MiB)", hostile.ZstdBomb}, {"zlib bomb (1 GiB)", hostile.ZlibBomb}, {"long names", hostile.LongNames}} {
		exe, file := plain, data
		if tc.kind >= 0 {
			if file, err = hostile.WithSymbols(data, tc.kind); err != nil {
				return err
			}
			exe = filepath.Join(dir, fmt.Sprintf("hostile%d", tc.kind))
			if err := os.WriteFile(exe, file, 0o755); err != nil {
				return err
			}
		}
		cmd := exec.Command(exe, "segv")
		cmd.Run()
		m, err := waitBundle(bin, cfg, cmd.Process.Pid)
		if err != nil {
			return fmt.Errorf("%s: %w", tc.name, err)
		}
		fn := "(unnamed)"
		if len(m.Backtrace) > 0 && m.Backtrace[0].Function != "" {
			fn = m.Backtrace[0].Function
		}
		rss := m.Collector.MaxRSSBytes
		if tc.kind >= 0 {
			worst = max(worst, rss)
		}
		fmt.Printf("  %-20s %8d bytes  frame 0 %-12s helper peak RSS %5.1f MiB, held the crasher %.0f ms, %d warning(s)\n",
			tc.name, len(file), fn, float64(rss)/(1<<20), m.Collector.HeldSeconds*1000, len(m.Analysis.Warnings))
	}
	fmt.Printf("helper peak RSS on a hostile file: %.1f MiB (target <= 64 MiB: %s)\n", float64(worst)/(1<<20), verdict(worst <= 64<<20))
	return nil
}
