package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/test/harness"
)

// TestCrashMatrix crashes a -g program linked with libm with each
// core-dumping signal, in the main thread and in one of several threads, and
// checks that every bundle is whole, names the right files, and opens in gdb
// with the crashing function and every shared library's symbols.
func TestCrashMatrix(t *testing.T) {
	harness.RequireRoot(t)
	exe := buildSignals(t, t.TempDir())
	signals := []struct {
		mode string
		sig  syscall.Signal
		name string
		fn   string
	}{
		{"segv", syscall.SIGSEGV, "SIGSEGV", "crash_segv"},
		{"abrt", syscall.SIGABRT, "SIGABRT", "crash_abrt"},
		{"bus", syscall.SIGBUS, "SIGBUS", "crash_bus"},
		{"fpe", syscall.SIGFPE, "SIGFPE", "crash_fpe"},
	}
	for _, s := range signals {
		for _, threads := range []bool{false, true} {
			name := s.mode + "/single"
			args := []string{s.mode}
			if threads {
				name = s.mode + "/threads"
				args = append(args, "--threads")
			}
			t.Run(name, func(t *testing.T) {
				n := harness.Install(t, "")
				cmd := exec.Command(exe, args...)
				m := collectCrash(t, n, cmd, nil)
				if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signal() != s.sig {
					t.Errorf("crasher died of %v, want %v", ws.Signal(), s.sig)
				}
				if m.Signal != int(s.sig) || m.SignalName != s.name {
					t.Errorf("signal %d %q, want %d %q", m.Signal, m.SignalName, int(s.sig), s.name)
				}
				if m.PID != cmd.Process.Pid {
					t.Errorf("pid %d, want %d", m.PID, cmd.Process.Pid)
				}
				if threads && (m.TID == 0 || m.TID == m.PID) {
					t.Errorf("tid %d: want the crashing thread, not the main thread %d", m.TID, m.PID)
				}
				if !threads && m.TID != m.PID {
					t.Errorf("tid %d, want the main thread %d", m.TID, m.PID)
				}
				if m.Exe != exe || m.ExeRaw != nil {
					t.Errorf("exe %q (raw %q), want %q", m.Exe, m.ExeRaw, exe)
				}
				if m.Comm != "signals" || m.CommRaw != nil {
					t.Errorf("comm %q (raw %q), want \"signals\"", m.Comm, m.CommRaw)
				}
				checkWholeCore(t, m)
				checkFiles(t, n, m, exe)
				_, libs := checkDebuggable(t, n, m, s.fn)
				if !hasBase(libs, "libm.so") {
					t.Errorf("gdb loaded no libm from the sysroot: %q", libs)
				}
			})
		}
	}
}

// TestCoreExactBytes puts a tee in front of the helper and checks that
// core.zst, decompressed by the zstd CLI, and the pulled core are exactly the
// bytes the kernel sent, and that the pulled core keeps holes as holes.
func TestCoreExactBytes(t *testing.T) {
	n := harness.Install(t, "")
	exe := buildSignals(t, n.Dir)
	raw := teeCore(t, n)

	const holeMiB = 256 // mapped, never touched: the kernel streams zeros
	cmd := exec.Command(exe, "segv", "--hole", fmt.Sprint(holeMiB))
	m := collectCrash(t, n, cmd, nil)
	checkWholeCore(t, m)

	st, err := os.Stat(raw)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != m.Core.RawBytes || st.Size() < holeMiB<<20 {
		t.Fatalf("the kernel sent %d bytes; metadata says raw_bytes %d (hole %d MiB)", st.Size(), m.Core.RawBytes, holeMiB)
	}
	want := sha256File(t, raw)
	zstd := exec.Command("zstd", "-d", "-c", filepath.Join(n.BundleDir(m.ID), bundle.CoreFile))
	if got := sha256Output(t, zstd); got != want {
		t.Errorf("zstd -d of core.zst has sha256 %s, the kernel's core %s", got, want)
	}
	dir := n.Pull(m.ID)
	core := filepath.Join(dir, "core")
	if got := sha256File(t, core); got != want {
		t.Errorf("pulled core has sha256 %s, the kernel's core %s", got, want)
	}
	var cst syscall.Stat_t
	if err := syscall.Stat(core, &cst); err != nil {
		t.Fatal(err)
	}
	if cst.Size != st.Size() || cst.Blocks*512 > cst.Size/4 {
		t.Errorf("pulled core: %d bytes, %d on disk; want %d bytes, sparse (under a quarter on disk)", cst.Size, cst.Blocks*512, st.Size())
	}
}

// TestInstallUninstallRestores checks that install reports what it replaces,
// that installing twice keeps the first saved values, and that uninstall
// puts back core_pattern and core_pipe_limit byte for byte.
func TestInstallUninstallRestores(t *testing.T) {
	n := harness.Install(t, "")
	n.Run("uninstall") // back to the values Install found; the harness restores them at the end too

	// The kernel keeps a pattern up to its first newline and reads it back
	// with one.
	const previous = "|/bin/false with  two  spaces %p"
	writeKernel(t, "core_pattern", previous+"\nnot kept")
	writeKernel(t, "core_pipe_limit", "3")
	pattern, limit := readKernel(t, "core_pattern"), readKernel(t, "core_pipe_limit")
	if pattern != previous+"\n" || limit != "3\n" {
		t.Fatalf("set core_pattern %q and core_pipe_limit %q, read back %q and %q", previous, "3", pattern, limit)
	}

	out := n.Run("install")
	if !strings.Contains(out, "replaced kernel.core_pattern: "+previous+"\n") {
		t.Errorf("install does not say it replaced %q:\n%s", previous, out)
	}
	ours := "|" + n.Bin + " collect "
	if got := readKernel(t, "core_pattern"); !strings.HasPrefix(got, ours) {
		t.Errorf("after install core_pattern is %q, want %q...", got, ours)
	}
	if got := readKernel(t, "core_pipe_limit"); got != limit {
		t.Errorf("install changed a non-zero core_pipe_limit from %q to %q", limit, got)
	}

	out = n.Run("install")
	if !strings.Contains(out, "already installed") || strings.Contains(out, "replaced kernel.core_pattern") {
		t.Errorf("second install does not say corecatch was already installed:\n%s", out)
	}

	n.Run("uninstall")
	if got := readKernel(t, "core_pattern"); got != pattern {
		t.Errorf("after install, install, uninstall core_pattern is %q, want %q", got, pattern)
	}
	if got := readKernel(t, "core_pipe_limit"); got != limit {
		t.Errorf("after install, install, uninstall core_pipe_limit is %q, want %q", got, limit)
	}
}

// TestInstallRefusesNonRoot runs install and uninstall as nobody: both must
// refuse with a message that says to use sudo, and change nothing.
func TestInstallRefusesNonRoot(t *testing.T) {
	n := harness.Install(t, "")
	pattern, limit := readKernel(t, "core_pattern"), readKernel(t, "core_pipe_limit")
	for _, command := range []string{"install", "uninstall"} {
		cmd := exec.Command(n.Bin, "--config", n.Config, command)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("%s as uid 65534 succeeded:\n%s", command, out)
		} else if !strings.Contains(string(out), "sudo") && !strings.Contains(string(out), "root") {
			t.Errorf("%s as uid 65534 failed without saying it needs root or sudo: %v\n%s", command, err, out)
		}
		if got := readKernel(t, "core_pattern"); got != pattern {
			t.Errorf("%s as uid 65534 changed core_pattern from %q to %q", command, pattern, got)
		}
		if got := readKernel(t, "core_pipe_limit"); got != limit {
			t.Errorf("%s as uid 65534 changed core_pipe_limit from %q to %q", command, limit, got)
		}
	}
}

// teeCore puts a tee in front of the installed helper: the kernel's raw
// core is kept in a file, whose path it returns, and the helper gets it too.
func teeCore(t *testing.T, n *harness.Node) string {
	t.Helper()
	raw := filepath.Join(n.Dir, "raw.core")
	tee := filepath.Join(n.Dir, "tee.sh")
	script := fmt.Sprintf("#!/bin/sh\n# Keep the raw core the kernel sends, and pass it on to corecatch.\ntee %s | %s collect -c %s \"$@\"\n",
		raw, n.Bin, spool.Open(n.Spool).HelperConfig())
	if err := os.WriteFile(tee, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	pattern := "|" + tee + " %P %I %s %t %c %d %u %g %e"
	if len(pattern) > 127 {
		t.Fatalf("core_pattern %q is longer than the kernel's 127 bytes", pattern)
	}
	writeKernel(t, "core_pattern", pattern)
	if got := readKernel(t, "core_pattern"); got != pattern+"\n" {
		t.Fatalf("core_pattern reads back %q, want %q", got, pattern)
	}
	return raw
}

// buildSignals compiles test/crashers/signals.c, linked with libm and
// pthreads, into dir.
func buildSignals(t *testing.T, dir string) string {
	t.Helper()
	return harness.CC(t, dir, "signals", []string{"signals.c"}, "-pthread", "-lm")
}

// collectCrash runs cmd until it dies with a core and returns its bundle.
// With act, cmd is a crasher that prints "ready" and then waits for a line
// on stdin: act runs in between, so a test can change the world under a
// live process just before it crashes.
func collectCrash(t *testing.T, n *harness.Node, cmd *exec.Cmd, act func() error) *bundle.Metadata {
	t.Helper()
	if act == nil {
		n.Crash(cmd)
		return n.WaitBundle(cmd.Process.Pid)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range []*os.File{inR, inW, outR, outW} {
			f.Close()
		}
	}()
	cmd.Stdin, cmd.Stdout = inR, outW
	done := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(outR).ReadString('\n')
		if err == nil && !strings.HasPrefix(line, "ready") {
			err = fmt.Errorf("crasher said %q instead of ready", line)
		}
		if err == nil {
			err = act()
		}
		// Let the crasher go on even when act failed: Crash waits for it.
		inW.Write([]byte("crash\n"))
		done <- err
	}()
	n.Crash(cmd)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return n.WaitBundle(cmd.Process.Pid)
}

// checkWholeCore checks that a bundle's core is every byte the core's own
// headers promise.
func checkWholeCore(t *testing.T, m *bundle.Metadata) {
	t.Helper()
	c := m.Core
	if c.Truncated || c.ExpectedBytes <= 0 || c.RawBytes != c.ExpectedBytes || c.KeptBytes != c.RawBytes || c.StoredBytes <= 0 {
		t.Errorf("core not whole: %+v", c)
	}
}

// checkFiles checks the bundle's executable and that every shared library
// of the crasher's /proc/PID/maps was captured with the original file's
// bytes and build-id.
func checkFiles(t *testing.T, n *harness.Node, m *bundle.Metadata, exe string) {
	t.Helper()
	f := fileWhere(m, func(f *bundle.File) bool { return f.Role == "exe" })
	if f == nil {
		t.Fatalf("no file with role exe in %+v", m.Files)
	}
	if f.Path != exe || f.Deleted {
		t.Errorf("exe file %+v, want path %q", f, exe)
	}
	checkSameFile(t, f, exe)
	maps, err := os.ReadFile(filepath.Join(n.BundleDir(m.ID), bundle.ProcDir, "maps"))
	if err != nil {
		t.Fatal(err)
	}
	libs := map[string]bool{}
	for _, line := range strings.Split(string(maps), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 6 && isLibrary(fields[5]) {
			libs[fields[5]] = true
		}
	}
	for _, base := range []string{"libc.so", "libm.so", "ld-linux"} {
		if !hasBase(keys(libs), base) {
			t.Errorf("the crasher's maps list no %s:\n%s", base, maps)
		}
	}
	for lib := range libs {
		f := fileWhere(m, func(f *bundle.File) bool { return f.Path == lib })
		if f == nil {
			t.Errorf("mapped library %s is not in the bundle's files", lib)
			continue
		}
		if f.Role != "mapped" {
			t.Errorf("library %s has role %q, want mapped", lib, f.Role)
		}
		checkSameFile(t, f, lib)
	}
}

// checkSameFile checks that a bundle file entry was captured and holds the
// bytes and build-id of the file at path.
func checkSameFile(t *testing.T, f *bundle.File, path string) {
	t.Helper()
	if f.Stored == "" {
		t.Errorf("%s not captured: %s", path, f.Skipped)
	}
	if sum := sha256File(t, path); f.SHA256 != sum {
		t.Errorf("%s: bundle sha256 %s, file's %s", path, f.SHA256, sum)
	}
	if id := readelfBuildID(t, path); id == "" || f.BuildID != id {
		t.Errorf("%s: bundle build_id %q, readelf -n says %q", path, f.BuildID, id)
	}
}

var buildIDLine = regexp.MustCompile(`Build ID: ([0-9a-f]+)`)

// readelfBuildID returns the GNU build-id of an ELF file as readelf -n
// prints it.
func readelfBuildID(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("readelf", "-n", path).CombinedOutput()
	if err != nil {
		t.Fatalf("readelf -n %s: %v\n%s", path, err, out)
	}
	if m := buildIDLine.FindSubmatch(out); m != nil {
		return string(m[1])
	}
	return ""
}

var sharedLibraryLine = regexp.MustCompile(`^(?:0x[0-9a-f]+\s+0x[0-9a-f]+\s+)?(Yes \(\*\)|Yes|No)\s+(\S.*)$`)

// xstateWarning is a warning gdb 13 prints for every core on this kernel,
// plain kernel cores included: the kernel's NT_X86_XSTATE note is larger
// than the layout gdb 13 knows. It says nothing about the bundle.
var xstateWarning = regexp.MustCompile("^warning: Section `\\.reg-xstate/\\d+' in core file too small\\.$")

// checkDebuggable pulls a bundle and opens it in gdb as the pull command
// says to: the backtrace must name fn, every shared library must have its
// symbols read from the pulled sysroot, and gdb must not complain about a
// missing or short file. It returns the pulled directory and the libraries
// gdb loaded.
func checkDebuggable(t *testing.T, n *harness.Node, m *bundle.Metadata, fn string) (string, []string) {
	t.Helper()
	dir := n.Pull(m.ID)
	exe := m.ExePath()
	if exe == "" {
		t.Fatalf("bundle has no captured executable: %+v", m.Files)
	}
	sysroot := filepath.Join(dir, bundle.SysrootDir)
	// Only the bundle: not this machine's separate debug info (libc6-dbg),
	// with which gdb would try to list libc's sources, which are not here.
	cmd := exec.Command("gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off",
		"-iex", "set debug-file-directory "+filepath.Join(sysroot, "usr", "lib", "debug"),
		"-iex", "set sysroot "+sysroot,
		"-ex", "bt", "-ex", "info sharedlibrary",
		filepath.Join(dir, exe), filepath.Join(dir, "core"))
	raw, err := cmd.CombinedOutput()
	out := string(raw)
	if err != nil {
		t.Fatalf("gdb: %v\n%s", err, out)
	}
	var kept []string
	for _, line := range strings.Split(out, "\n") {
		if !xstateWarning.MatchString(line) {
			kept = append(kept, line)
		}
	}
	rest := strings.Join(kept, "\n")
	for _, bad := range []string{"truncated", "past end of file", "Can't open file", "Could not load shared library",
		"No such file", "may not match specified executable"} {
		if strings.Contains(rest, bad) {
			t.Errorf("gdb says %q:\n%s", bad, out)
		}
	}
	if !regexp.MustCompile(`(?m)^#\d+ .*\b` + regexp.QuoteMeta(fn) + ` \(`).MatchString(out) {
		t.Errorf("gdb bt does not name %s:\n%s", fn, out)
	}
	var libs []string
	table := false
	for _, line := range kept {
		switch {
		case strings.HasPrefix(line, "From") && strings.Contains(line, "Shared Object Library"):
			table = true
		case !table:
		case strings.TrimSpace(line) == "" || strings.HasPrefix(line, "(*)"):
			table = false
		default:
			f := sharedLibraryLine.FindStringSubmatch(line)
			if f == nil || !strings.HasPrefix(f[1], "Yes") || !strings.HasPrefix(f[2], sysroot+"/") {
				t.Errorf("gdb did not load this library from the sysroot %s: %q", sysroot, line)
				continue
			}
			libs = append(libs, f[2])
		}
	}
	if len(libs) == 0 {
		t.Errorf("gdb lists no shared libraries:\n%s", out)
	}
	if t.Failed() {
		t.Logf("gdb output:\n%s", out)
	}
	return dir, libs
}

var sharedObject = regexp.MustCompile(`\.so(\.|$)`)

// isLibrary reports whether a mapped path names a shared object.
func isLibrary(p string) bool {
	return strings.HasPrefix(p, "/") && sharedObject.MatchString(filepath.Base(p))
}

func hasBase(paths []string, prefix string) bool {
	for _, p := range paths {
		if strings.HasPrefix(filepath.Base(p), prefix) {
			return true
		}
	}
	return false
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func fileWhere(m *bundle.Metadata, match func(*bundle.File) bool) *bundle.File {
	for i := range m.Files {
		if match(&m.Files[i]) {
			return &m.Files[i]
		}
	}
	return nil
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sha256Output runs cmd and returns the sha256 of its standard output.
func sha256Output(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	h := sha256.New()
	cmd.Stdout = h
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, stderr.Bytes())
	}
	return hex.EncodeToString(h.Sum(nil))
}

func readKernel(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/sys/kernel/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func writeKernel(t *testing.T, name, value string) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/kernel/"+name, []byte(value), 0o644); err != nil {
		t.Fatal(err)
	}
}
