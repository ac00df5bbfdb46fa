package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/test/harness"
)

const limMiB = 1 << 20

// limMem compiles lim_mem, which touches MIB MiB of memory ("fill":
// compressible, "rand": incompressible) and segfaults in crash_here. -O2
// (after the harness's -O0) makes filling gigabytes quick.
func limMem(t *testing.T, n *harness.Node) string {
	t.Helper()
	return harness.CC(t, n.Dir, "lim_mem", []string{"lim_mem.c"}, "-O2")
}

// limReconfigure rewrites the node's config with other extra YAML, as
// harness.Install writes it, and re-runs install so that the helper's
// snapshot follows. The store stays the same.
func limReconfigure(t *testing.T, n *harness.Node, extraYAML string) {
	t.Helper()
	cfg := fmt.Sprintf("store: file://%s\nspool: %s\n%s", n.Store, n.Spool, extraYAML)
	if err := os.WriteFile(n.Config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	n.Run("install")
}

// limZstdDecoded decodes a .zst file with the zstd CLI, the reference decoder,
// and returns how many bytes it produced and how it exited.
func limZstdDecoded(t *testing.T, path string) (int64, error) {
	t.Helper()
	cmd := exec.Command("zstd", "-d", "-c", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("zstd: %v (apt-get install zstd)", err)
	}
	n, _ := io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return n, fmt.Errorf("zstd -d -c %s: %v: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	return n, nil
}

// limBundleOf returns the published bundle of pid, or nil.
func limBundleOf(n *harness.Node, pid int) *bundle.Metadata {
	for _, m := range n.Bundles() {
		if m.PID == pid {
			return m
		}
	}
	return nil
}

// limIDs returns the ids `corecatch ls` lists.
func limIDs(n *harness.Node) map[string]bool {
	out := map[string]bool{}
	for _, m := range n.Bundles() {
		out[m.ID] = true
	}
	return out
}

// limDiskBytes is what a directory tree takes on disk, counted as the store's
// retention counts it (allocated blocks).
func limDiskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += info.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// limTmpEntries lists <store>/.tmp, where helpers write bundles before they
// publish them.
func limTmpEntries(t *testing.T, n *harness.Node) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(n.Store, ".tmp"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// limHelperOf returns the pid of the `corecatch collect -c CONFIG PID ...`
// process the kernel started for the crash of pid, or 0.
func limHelperOf(pid int) int {
	want := strconv.Itoa(pid)
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
		for i, a := range args {
			if a == "collect" && i+3 < len(args) && args[i+1] == "-c" && args[i+3] == want {
				hp, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
				return hp
			}
		}
	}
	return 0
}

// limReadBytes returns rchar of /proc/PID/io: what the process has read so
// far, the core stream included; -1 once the process is gone.
func limReadBytes(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "rchar: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

// limWaitStreaming waits until the helper for the crash of pid has read at
// least min bytes of the core, and returns the helper's pid. It returns 0
// when the helper came and went (or never came) before that: the dump was
// over before it could be caught in the middle. It fails the test only if
// the crasher still runs after 60 s without any helper.
func limWaitStreaming(t *testing.T, cmd *exec.Cmd, done <-chan struct{}, min int64) int {
	t.Helper()
	pid := cmd.Process.Pid
	deadline := time.Now().Add(60 * time.Second)
	helper := 0
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return 0
		default:
		}
		if helper == 0 {
			helper = limHelperOf(pid)
		}
		if helper != 0 {
			switch n := limReadBytes(helper); {
			case n < 0:
				return 0
			case n >= min:
				return helper
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("no helper streaming the core of pid %d after 60s", pid)
	return 0
}

// limHelperLog returns the kernel log lines the helper wrote about pid.
func limHelperLog(pid int) string {
	out, _ := exec.Command("dmesg").Output()
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "corecatch[") && strings.Contains(l, fmt.Sprintf(`"pid": %d,`, pid)) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// limStartCrash starts a crasher and returns a channel closed once it was
// reaped (cmd.ProcessState is then set).
func limStartCrash(t *testing.T, cmd *exec.Cmd) <-chan struct{} {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	return done
}

// limNextSecond waits until the wall clock enters a new second: bundle ids
// carry the crash time to the second, and retention orders bundles by id,
// so crashes that must be told apart by age happen in different seconds.
func limNextSecond() {
	now := time.Now()
	time.Sleep(now.Truncate(time.Second).Add(time.Second + 10*time.Millisecond).Sub(now))
}

// TestLimitMaxCoreBytes: a 64 MiB process under max_core_bytes 4MiB keeps
// exactly the first 4 MiB of its core, drains the rest, and the kept prefix
// still opens in gdb.
func TestLimitMaxCoreBytes(t *testing.T) {
	n := harness.Install(t, "collect:\n  max_core_bytes: 4MiB\n")
	exe := limMem(t, n)
	cmd := exec.Command(exe, "64", "fill")
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)
	c := m.Core
	t.Logf("core: %+v", c)
	if !c.Truncated || c.TruncateReason != bundle.ReasonMaxCoreBytes {
		t.Errorf("truncated %v reason %q, want true %q", c.Truncated, c.TruncateReason, bundle.ReasonMaxCoreBytes)
	}
	if c.KeptBytes != 4*limMiB {
		t.Errorf("kept_bytes %d, want exactly %d", c.KeptBytes, 4*limMiB)
	}
	if c.ExpectedBytes < 64*limMiB || c.RawBytes != c.ExpectedBytes {
		t.Errorf("raw_bytes %d, expected_bytes %d: want the whole core (> 64 MiB) drained", c.RawBytes, c.ExpectedBytes)
	}
	zst := filepath.Join(n.BundleDir(m.ID), bundle.CoreFile)
	if st, err := os.Stat(zst); err != nil || st.Size() != c.StoredBytes {
		t.Errorf("core.zst: %v, size %v, want stored_bytes %d", err, st, c.StoredBytes)
	}
	if got, err := limZstdDecoded(t, zst); err != nil || got != c.KeptBytes {
		t.Errorf("core.zst decodes to %d bytes (%v), want kept_bytes %d", got, err, c.KeptBytes)
	}

	dir := n.Pull(m.ID)
	core := filepath.Join(dir, "core")
	if st, err := os.Stat(core); err != nil || st.Size() != c.KeptBytes {
		t.Errorf("pulled core: %v, %v; want %d bytes", err, st, c.KeptBytes)
	}
	out, err := exec.Command("gdb", "-q", "-batch", "-iex", "set sysroot "+filepath.Join(dir, bundle.SysrootDir),
		"-ex", "bt", filepath.Join(dir, m.ExePath()), core).CombinedOutput()
	// gdb warns that the core is shorter than its headers say: expected.
	t.Logf("gdb on the truncated core (%v):\n%s", err, out)
	if !strings.Contains(string(out), "crash_here") {
		t.Errorf("gdb cannot find crash_here in the truncated core")
	}
}

// TestLimitRlimit: RLIMIT_CORE is recorded always and caps the core only
// with honor_rlimit; a limit of 0 then keeps no core at all, but the bundle
// is still published.
//
// The limit of 0 goes through the kernel. Nonzero limits cannot: `sudo make
// test` runs with a hard RLIMIT_CORE of 0 (sudo disables core dumps for
// itself and, without CAP_SYS_RESOURCE, as on this VM, cannot restore the
// limit for the command), and nothing below it can raise it. For those the
// helper runs by hand as the kernel would run it, on a gcore of a live
// process, with %c set to the limit.
func TestLimitRlimit(t *testing.T) {
	t.Run("honored", func(t *testing.T) {
		m := limCollectByHand(t, true, limMiB)
		c := m.Core
		if !c.Truncated || c.TruncateReason != bundle.ReasonRlimit || c.KeptBytes != limMiB {
			t.Errorf("truncated %v reason %q kept %d, want true %q %d", c.Truncated, c.TruncateReason, c.KeptBytes, bundle.ReasonRlimit, limMiB)
		}
		if c.RawBytes < 8*limMiB {
			t.Errorf("raw_bytes %d: want the whole core (> 8 MiB) drained", c.RawBytes)
		}
	})
	t.Run("ignored", func(t *testing.T) {
		m := limCollectByHand(t, false, limMiB)
		c := m.Core
		if c.Truncated || c.KeptBytes != c.RawBytes || c.RawBytes < 8*limMiB {
			t.Errorf("want the whole core kept despite RLIMIT_CORE: %+v", c)
		}
	})
	t.Run("zero", func(t *testing.T) {
		n := harness.Install(t, "collect:\n  honor_rlimit: true\n")
		cmd := exec.Command("bash", "-c", "ulimit -c 0; exec \"$0\" 8 fill", limMem(t, n))
		n.Crash(cmd)
		m := n.WaitBundle(cmd.Process.Pid)
		c := m.Core
		if c.RlimitCore != 0 {
			t.Errorf("rlimit_core %d, want 0", c.RlimitCore)
		}
		if _, err := os.Stat(filepath.Join(n.BundleDir(m.ID), bundle.CoreFile)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("core.zst kept under RLIMIT_CORE 0 (stat: %v)", err)
		}
		if !c.Truncated || c.TruncateReason != bundle.ReasonRlimit || c.KeptBytes != 0 || c.StoredBytes != 0 {
			t.Errorf("want no core kept, truncated for rlimit: %+v", c)
		}
		if c.RawBytes < 8*limMiB {
			t.Errorf("raw_bytes %d: want the whole core (> 8 MiB) drained", c.RawBytes)
		}
		if m.ExePath() == "" {
			t.Errorf("the bundle lacks the executable: %+v", m.Files)
		}
	})
}

// limCollectByHand runs `corecatch collect` as the kernel would for a live
// lim_mem process whose RLIMIT_CORE is rlimit, with a gcore of it on stdin,
// and returns the bundle. The core's raw and kept bytes are checked against
// the gcore file.
func limCollectByHand(t *testing.T, honor bool, rlimit int64) *bundle.Metadata {
	t.Helper()
	n := harness.Install(t, fmt.Sprintf("collect:\n  honor_rlimit: %v\n", honor))
	live := exec.Command(limMem(t, n), "8", "fill", "wait")
	stdin, err := live.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	ready, err := live.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		live.Wait()
	}()
	if _, err := ready.Read(make([]byte, 1)); err != nil {
		t.Fatalf("lim_mem never got ready: %v", err)
	}
	pid := live.Process.Pid
	prefix := filepath.Join(n.Dir, "gcore")
	if out, err := exec.Command("gcore", "-o", prefix, fmt.Sprint(pid)).CombinedOutput(); err != nil {
		t.Fatalf("gcore: %v\n%s", err, out)
	}
	core, err := os.Open(fmt.Sprintf("%s.%d", prefix, pid))
	if err != nil {
		t.Fatal(err)
	}
	defer core.Close()
	info, err := core.Stat()
	if err != nil {
		t.Fatal(err)
	}
	collect := exec.Command(n.Bin, "collect", "-c", spool.Open(n.Spool).HelperConfig(),
		fmt.Sprint(pid), fmt.Sprint(pid), "11", fmt.Sprint(time.Now().Unix()), fmt.Sprint(rlimit), "1", "0", "0", "lim_mem")
	collect.Stdin = core
	if out, err := collect.CombinedOutput(); err != nil {
		t.Fatalf("collect: %v\n%s", err, out)
	}
	m := n.WaitBundle(pid)
	if m.Core.RlimitCore != rlimit {
		t.Errorf("rlimit_core %d, want %d", m.Core.RlimitCore, rlimit)
	}
	if m.Core.RawBytes != info.Size() {
		t.Errorf("raw_bytes %d, want the gcore's %d", m.Core.RawBytes, info.Size())
	}
	if got, err := limZstdDecoded(t, filepath.Join(n.BundleDir(m.ID), bundle.CoreFile)); err != nil || got != m.Core.KeptBytes {
		t.Errorf("core.zst decodes to %d bytes (%v), want kept_bytes %d", got, err, m.Core.KeptBytes)
	}
	return m
}

// TestLimitShortCore: a crasher SIGKILLed while its core streams leaves a
// short core, which the bundle records as truncated (reason short), never
// as whole.
func TestLimitShortCore(t *testing.T) {
	n := harness.Install(t, "")
	exe := limMem(t, n)
	// The kill must land while the kernel is still dumping: 1.5 GiB of
	// random data takes seconds to stream, and the kill is sent once the
	// helper has read 64 MiB of it. Should the dump still finish first (a
	// very fast machine, a late scheduling), the crash is tried again, at
	// most three times; the test never asserts on speed.
	for attempt := 1; attempt <= 3; attempt++ {
		cmd := exec.Command(exe, "1536", "rand")
		done := limStartCrash(t, cmd)
		pid := cmd.Process.Pid
		if limWaitStreaming(t, cmd, done, 64*limMiB) == 0 {
			<-done
			t.Logf("attempt %d: the dump of pid %d ended before it could be interrupted; retrying", attempt, pid)
			continue
		}
		cmd.Process.Kill()
		<-done
		t.Logf("attempt %d: crasher killed mid-dump, %v", attempt, cmd.ProcessState)
		c := n.WaitBundle(pid).Core
		t.Logf("core: %+v", c)
		if c.RawBytes >= 1536*limMiB {
			// The whole 1.5 GiB came through: the kill landed after the
			// dump, whatever the helper says.
			t.Logf("attempt %d: the kill came after the dump; retrying", attempt)
			continue
		}
		if !c.Truncated || c.TruncateReason != bundle.ReasonShort {
			t.Errorf("truncated %v reason %q, want true %q", c.Truncated, c.TruncateReason, bundle.ReasonShort)
		}
		if c.ExpectedBytes < 1536*limMiB || c.RawBytes >= c.ExpectedBytes {
			t.Errorf("raw_bytes %d, expected_bytes %d: want the short core of a > 1.5 GiB one recognised as short", c.RawBytes, c.ExpectedBytes)
		}
		if c.KeptBytes != c.RawBytes {
			t.Errorf("kept_bytes %d, want every byte that came (%d)", c.KeptBytes, c.RawBytes)
		}
		return
	}
	t.Fatal("three crashes in a row finished dumping before the kill; could not produce a short core")
}

// TestLimitQuota: on a small filesystem, keep_free cuts a large core
// (reason quota; disk_full should the encoder hit ENOSPC first) and the
// bundle is still published with valid metadata and a decodable prefix.
func TestLimitQuota(t *testing.T) {
	n := harness.Install(t, "retention:\n  max_use: \"0\"\n  keep_free: 16MiB\n")
	if err := os.MkdirAll(n.Store, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", n.Store).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		// A helper may still be running its retention pass: retry, then
		// detach, so that no tmpfs outlives the test.
		for i := 0; i < 50; i++ {
			if syscall.Unmount(n.Store, 0) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := syscall.Unmount(n.Store, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", n.Store, err)
		}
	})
	exe := limMem(t, n)
	cmd := exec.Command(exe, "200", "rand")
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)
	c := m.Core
	t.Logf("core: %+v", c)
	t.Logf("truncate_reason seen: %q", c.TruncateReason)
	if !c.Truncated || (c.TruncateReason != bundle.ReasonQuota && c.TruncateReason != bundle.ReasonDiskFull) {
		t.Errorf("truncated %v reason %q, want true and quota (or disk_full)", c.Truncated, c.TruncateReason)
	}
	if c.RawBytes < 200*limMiB {
		t.Errorf("raw_bytes %d: want the whole core (> 200 MiB) drained", c.RawBytes)
	}
	if c.KeptBytes <= 0 || c.KeptBytes >= c.RawBytes {
		t.Errorf("kept_bytes %d: want a proper prefix of %d", c.KeptBytes, c.RawBytes)
	}
	dir := n.BundleDir(m.ID)
	got, err := limZstdDecoded(t, filepath.Join(dir, bundle.CoreFile))
	switch c.TruncateReason {
	case bundle.ReasonQuota:
		if err != nil || got != c.KeptBytes {
			t.Errorf("core.zst decodes to %d bytes (%v), want kept_bytes %d", got, err, c.KeptBytes)
		}
	case bundle.ReasonDiskFull:
		t.Logf("core.zst decodes to %d of %d kept bytes (%v)", got, c.KeptBytes, err)
		if got > c.KeptBytes {
			t.Errorf("core.zst decodes to %d bytes, more than kept_bytes %d", got, c.KeptBytes)
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, bundle.MetadataFile))
	if err != nil {
		t.Fatal(err)
	}
	disk, err := bundle.Decode(data)
	if err != nil || disk.ID != m.ID || disk.Core != c {
		t.Errorf("metadata.json: %v, %+v", err, disk)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(n.Store, &st); err == nil {
		t.Logf("tmpfs free after the bundle: %d bytes", int64(st.Bavail)*st.Bsize)
	}
}

// TestLimitRetention: max_use deletes the oldest bundles and never the one
// just written, even when it alone exceeds max_use; max_age deletes a
// bundle from 2020 at the next crash.
func TestLimitRetention(t *testing.T) {
	const base = "retention:\n  max_age: 14d\n  keep_free: \"0\"\n"
	n := harness.Install(t, noDedup+base+"  max_use: \"0\"\n")
	exe := limMem(t, n)
	var order []string
	crash := func() *bundle.Metadata {
		t.Helper()
		limNextSecond()
		cmd := exec.Command(exe, "0", "fill")
		n.Crash(cmd)
		m := n.WaitBundle(cmd.Process.Pid)
		order = append(order, m.ID)
		return m
	}
	expect := func(what string, want ...string) {
		t.Helper()
		got := limIDs(n)
		wantSet := map[string]bool{}
		for _, id := range want {
			wantSet[id] = true
		}
		for id := range got {
			if !wantSet[id] {
				t.Errorf("%s: bundle %s (crash #%d) is still there", what, id, limIndex(order, id)+1)
			}
		}
		for id := range wantSet {
			if !got[id] {
				t.Errorf("%s: bundle %s (crash #%d) was deleted", what, id, limIndex(order, id)+1)
			}
		}
	}

	// Each bundle (executable, libc, loader, a small core) takes about
	// the same room; measure it and allow two and a half of them.
	first := crash()
	size := limDiskBytes(t, n.BundleDir(first.ID))
	t.Logf("one bundle takes %d bytes; max_use %d", size, size*5/2)
	limReconfigure(t, n, noDedup+base+fmt.Sprintf("  max_use: %d\n", size*5/2))
	for i := 0; i < 3; i++ {
		crash()
	}
	expect("max_use of 2.5 bundles after 4 crashes", order[2], order[3])

	// A max_use below one bundle: the one just written stays.
	limReconfigure(t, n, noDedup+base+"  max_use: 1KiB\n")
	alone := crash()
	expect("max_use below one bundle", alone.ID)
	if _, err := os.Stat(filepath.Join(n.BundleDir(alone.ID), bundle.MetadataFile)); err != nil {
		t.Errorf("the newest bundle is gone: %v", err)
	}

	// max_age: a bundle from 2020 goes at the next crash.
	limReconfigure(t, n, noDedup+base+"  max_use: \"0\"\n")
	oldID := "20200101-000000-lim_mem-0a0b0c"
	old := n.BundleDir(oldID)
	if err := os.MkdirAll(filepath.Dir(old), 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", n.BundleDir(alone.ID), old).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	fake := *alone
	fake.ID, fake.Time = oldID, time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	data, err := bundle.Encode(&fake)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(old, bundle.MetadataFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	order = append(order, oldID)
	expect("a bundle from 2020 planted", alone.ID, oldID)
	latest := crash()
	expect("max_age 14d", alone.ID, latest.ID)
	if _, err := os.Stat(filepath.Join(n.Store, "2020")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s/2020 still exists (%v): retention left the old bundle or its date directories", n.Store, err)
	}
}

// TestLimitRetentionKeepsNewestCore: max_use makes room for a new core by
// deleting the oldest bundles, as systemd-coredump does, not by cutting the
// new core: three 16 MiB cores (about 18 MiB bundles) under max_use 40MiB
// are each kept whole, and the first bundle goes to make room for the third.
func TestLimitRetentionKeepsNewestCore(t *testing.T) {
	n := harness.Install(t, noDedup+"retention:\n  max_use: 40MiB\n  keep_free: \"0\"\n")
	exe := limMem(t, n)
	var order []string
	for i := 1; i <= 3; i++ {
		limNextSecond()
		cmd := exec.Command(exe, "16", "rand")
		n.Crash(cmd)
		m := n.WaitBundle(cmd.Process.Pid)
		order = append(order, m.ID)
		t.Logf("crash %d: core %+v, bundle %d bytes", i, m.Core, limDiskBytes(t, n.BundleDir(m.ID)))
		if m.Core.Truncated || m.Core.KeptBytes != m.Core.RawBytes {
			t.Errorf("crash %d: core cut (%s, kept %d of %d) although older bundles could make room for it",
				i, m.Core.TruncateReason, m.Core.KeptBytes, m.Core.RawBytes)
		}
	}
	got := limIDs(n)
	if got[order[0]] || !got[order[1]] || !got[order[2]] {
		t.Errorf("bundles left %v, want the last two of %q", got, order)
	}
}

func limIndex(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -2
}

// TestLimitHelperKilled: a helper SIGKILLed mid-stream publishes nothing and
// leaves its temporary bundle, which the next helper removes, once it is
// over a minute old, before publishing its own.
func TestLimitHelperKilled(t *testing.T) {
	n := harness.Install(t, noDedup)
	exe := limMem(t, n)
	var pid int
	for attempt := 1; ; attempt++ {
		cmd := exec.Command(exe, "1024", "rand")
		done := limStartCrash(t, cmd)
		pid = cmd.Process.Pid
		helper := limWaitStreaming(t, cmd, done, 64*limMiB)
		if helper == 0 {
			// The dump ended before the helper could be caught (see
			// TestLimitShortCore): try again, at most three times.
			<-done
			if attempt == 3 {
				t.Fatal("three dumps in a row ended before their helper could be killed")
			}
			t.Logf("attempt %d: the dump of pid %d ended first; retrying", attempt, pid)
			continue
		}
		if err := syscall.Kill(helper, syscall.SIGKILL); err != nil {
			t.Fatalf("kill helper %d: %v", helper, err)
		}
		<-done
		t.Logf("helper %d killed; crasher %d: %v", helper, pid, cmd.ProcessState)
		break
	}
	stale := limTmpEntries(t, n)
	if len(stale) != 1 || !strings.Contains(stale[0], "lim_mem") {
		t.Fatalf("<store>/.tmp holds %q, want the killed helper's temporary bundle", stale)
	}
	if _, err := os.Stat(filepath.Join(n.Store, ".tmp", stale[0], ".lock")); err != nil {
		t.Errorf("the stale temporary bundle lacks its lock file: %v", err)
	}
	if m := limBundleOf(n, pid); m != nil {
		t.Fatalf("the killed helper's crash was published: %+v", m)
	}
	// Helpers clean only entries over a minute old (a younger one may be
	// a live helper's between two steps): age it as a minute would.
	old := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(filepath.Join(n.Store, ".tmp", stale[0]), old, old); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(exe, "0", "fill")
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)
	if left := limTmpEntries(t, n); len(left) != 0 {
		t.Errorf("<store>/.tmp still holds %q after the next helper ran", left)
	}
	if m.Core.Truncated {
		t.Errorf("the next crash's core is truncated: %+v", m.Core)
	}
	if m := limBundleOf(n, pid); m != nil {
		t.Errorf("the killed helper's crash appeared: %+v", m)
	}
}

// TestLimitManyCrashes: 8 processes crash at the same moment (core_pipe_limit
// is 16 after install): 8 complete bundles with distinct ids.
func TestLimitManyCrashes(t *testing.T) {
	const count = 8
	n := harness.Install(t, noDedup)
	if limit, _ := os.ReadFile("/proc/sys/kernel/core_pipe_limit"); strings.TrimSpace(string(limit)) != "16" {
		t.Fatalf("core_pipe_limit is %q after install, want 16", limit)
	}
	exe := limMem(t, n)
	// Each crasher touches its memory, says so on the ready pipe, then
	// blocks reading the start pipe they all share; closing its write end
	// releases them all at once.
	start, release, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer start.Close()
	defer release.Close()
	ready, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer ready.Close()
	defer readyW.Close()
	cmds := make([]*exec.Cmd, count)
	var wg sync.WaitGroup
	for i := range cmds {
		cmds[i] = exec.Command(exe, "8", "fill", "wait")
		cmds[i].Stdin, cmds[i].Stdout = start, readyW
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { cmds[i].Wait() })
	}
	readyW.Close()
	if _, err := io.ReadFull(ready, make([]byte, count)); err != nil {
		t.Fatalf("waiting for %d crashers to be ready: %v", count, err)
	}
	release.Close()
	wg.Wait()

	// The kernel lets a crasher go when its helper closes the pipe; the
	// helper publishes after that. Wait for every helper to exit, then
	// look once, so that a lost crash fails fast.
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		running := 0
		for _, cmd := range cmds {
			if limHelperOf(cmd.Process.Pid) != 0 {
				running++
			}
		}
		if running == 0 {
			break
		}
	}
	byPID := map[int]*bundle.Metadata{}
	for _, m := range n.Bundles() {
		byPID[m.PID] = m
	}
	seen := map[string]bool{}
	for _, cmd := range cmds {
		pid := cmd.Process.Pid
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.CoreDump() {
			t.Errorf("pid %d: %v, no core", pid, cmd.ProcessState)
			continue
		}
		m := byPID[pid]
		if m == nil {
			t.Errorf("pid %d: no bundle published; its helper said:\n%s", pid, limHelperLog(pid))
			continue
		}
		c := m.Core
		if c.Truncated || c.KeptBytes != c.RawBytes || c.RawBytes < 8*limMiB {
			t.Errorf("pid %d: core not whole: %+v", m.PID, c)
		}
		if got, err := limZstdDecoded(t, filepath.Join(n.BundleDir(m.ID), bundle.CoreFile)); err != nil || got != c.RawBytes {
			t.Errorf("pid %d: core.zst decodes to %d bytes (%v), want %d", m.PID, got, err, c.RawBytes)
		}
		if m.ExePath() == "" || len(m.Warnings) > 0 {
			t.Errorf("pid %d: exe %q, warnings %q", m.PID, m.ExePath(), m.Warnings)
		}
		if seen[m.ID] {
			t.Errorf("id %s used twice", m.ID)
		}
		seen[m.ID] = true
	}
	if got := len(n.Bundles()); got != count {
		t.Errorf("%d bundles in the store, want %d", got, count)
	}
}

// noDedup keeps every core: these tests crash one program again and again
// and look at each core.
const noDedup = "dedup:\n  window: \"0\"\n"

// TestLimitFilesBudget crashes a process that maps eight sparse 128 MiB
// files, as a container could to fill the node's store: the bundle keeps
// their holes, charges only their data to collect.max_files_total_bytes,
// lists the files past it with the reason, and the older bundles that
// retention keeps survive it.
func TestLimitFilesBudget(t *testing.T) {
	const (
		budget  = 8 * limMiB
		dataKiB = 3 << 10 // each sparse file's data
	)
	n := harness.Install(t, noDedup+"retention:\n  max_use: 48MiB\n  keep_free: \"0\"\ncollect:\n  max_files_total_bytes: 8MiB\n")
	mapper := harness.CC(t, n.Dir, "mapper", []string{"mapper.c"})
	var older []string
	for range 2 {
		cmd := exec.Command(mapper, "sparse", n.Dir, "0", "1", "0")
		n.Crash(cmd)
		older = append(older, n.WaitBundle(cmd.Process.Pid).ID)
	}
	files := filepath.Join(n.Dir, "files")
	if err := os.Mkdir(files, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(mapper, "sparse", files, "8", "128", strconv.Itoa(dataKiB))
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)
	checkWholeCore(t, m)

	dir := n.BundleDir(m.ID)
	var kept, skipped int
	var data int64
	for _, f := range m.Files {
		data += f.DataBytes
		if filepath.Dir(f.Path) != files {
			continue
		}
		switch {
		case f.Stored != "":
			kept++
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(dir, f.Stored), &st); err != nil {
				t.Fatal(err)
			}
			if st.Size != 128*limMiB || st.Blocks*512 > dataKiB<<10+limMiB || f.DataBytes != dataKiB<<10 {
				t.Errorf("%s: stored %d bytes taking %d on disk, data_bytes %d; want 128 MiB, sparse, %d data bytes", f.Path, st.Size, st.Blocks*512, f.DataBytes, dataKiB<<10)
			}
			if sum := sha256File(t, f.Path); f.SHA256 != sum || sha256File(t, filepath.Join(dir, f.Stored)) != sum {
				t.Errorf("%s: sha256 %s, the copy's or the file's differs (%s)", f.Path, f.SHA256, sum)
			}
		case strings.Contains(f.Skipped, "collect.max_files_total_bytes"):
			skipped++
		default:
			t.Errorf("%s neither stored nor skipped for the budget: %+v", f.Path, f)
		}
	}
	if kept < 1 || skipped < 1 || kept+skipped != 8 {
		t.Errorf("sparse files: %d kept, %d skipped for the budget; want at least one of each, 8 in all", kept, skipped)
	}
	if data > budget {
		t.Errorf("captured files hold %d data bytes, over the budget of %d", data, budget)
	}
	used := limDiskBytes(t, dir)
	t.Logf("8 sparse 128 MiB files: %d kept, %d skipped; %d data bytes captured; the bundle takes %d bytes on disk", kept, skipped, data, used)
	if used > budget+m.Core.StoredBytes+limMiB {
		t.Errorf("the bundle takes %d bytes on disk; want at most the budget %d + the core %d + 1 MiB", used, budget, m.Core.StoredBytes)
	}
	have := map[string]bool{}
	for _, b := range n.Bundles() {
		have[b.ID] = true
	}
	for _, id := range older {
		if !have[id] {
			t.Errorf("older bundle %s was deleted to make room for a bundle of sparse files", id)
		}
	}
}
