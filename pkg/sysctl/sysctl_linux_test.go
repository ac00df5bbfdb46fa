package sysctl

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const patternArgs = "%P %I %s %t %c %d %u %g %e"

// fakeProc makes a directory holding core_pattern and core_pipe_limit as
// the kernel shows them, so that these tests never touch the real /proc/sys.
func fakeProc(t *testing.T, pattern, limit string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string]string{patternFile: pattern, pipeLimitFile: limit} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func ourPattern(t *testing.T, binary string) string {
	t.Helper()
	p, err := Pattern(binary, "/var/lib/corecatch/spool/collect.yaml", patternArgs)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInstallUninstallRestoresBytes(t *testing.T) {
	for _, tc := range []struct {
		name, pattern, limit string
		wantLimit            string // after install
	}{
		{"kernel default", "core\n", "0\n", "16"},
		{"systemd-coredump", "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t 9223372036854775808 %h\n", "16\n", "16\n"},
		{"odd spacing", "  /var/crash/core.%e.%p   \n", "4\n", "4\n"},
		{"apport", "|/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -- %E\n", "10\n", "10\n"},
		{"no trailing newline", "core", "0", "16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc := fakeProc(t, tc.pattern, tc.limit)
			state := filepath.Join(t.TempDir(), "saved.json")
			ours := ourPattern(t, "/usr/local/bin/corecatch")

			res, err := Install(proc, state, ours)
			if err != nil {
				t.Fatal(err)
			}
			if res.AlreadyInstalled || res.PreviousPattern != strings.TrimSuffix(tc.pattern, "\n") || res.Pattern != ours {
				t.Errorf("Install = %+v", res)
			}
			if got := readFile(t, filepath.Join(proc, patternFile)); string(got) != ours {
				t.Errorf("core_pattern = %q, want %q", got, ours)
			}
			if got := readFile(t, filepath.Join(proc, pipeLimitFile)); string(got) != tc.wantLimit {
				t.Errorf("core_pipe_limit = %q, want %q (raised only from 0)", got, tc.wantLimit)
			}
			if res.PreviousLimit != strings.TrimSpace(tc.limit) || res.PipeLimit != strings.TrimSpace(tc.wantLimit) {
				t.Errorf("Install limits = %q (was %q), want %q (was %q)", res.PipeLimit, res.PreviousLimit, strings.TrimSpace(tc.wantLimit), strings.TrimSpace(tc.limit))
			}
			saved := readFile(t, state)

			// A second install (an agent restart) finds its own pattern and
			// must keep the values the first one saved.
			res, err = Install(proc, state, ourPattern(t, "/opt/bin/corecatch"))
			if err != nil {
				t.Fatal(err)
			}
			if !res.AlreadyInstalled {
				t.Error("second Install did not see corecatch's own pattern")
			}
			if again := readFile(t, state); !bytes.Equal(again, saved) {
				t.Errorf("second Install overwrote the saved values:\n%s\nwas\n%s", again, saved)
			}

			res, err = Uninstall(proc, state)
			if err != nil {
				t.Fatal(err)
			}
			if got := readFile(t, filepath.Join(proc, patternFile)); string(got) != tc.pattern {
				t.Errorf("restored core_pattern = %q, want %q byte for byte", got, tc.pattern)
			}
			if got := readFile(t, filepath.Join(proc, pipeLimitFile)); string(got) != tc.limit {
				t.Errorf("restored core_pipe_limit = %q, want %q byte for byte", got, tc.limit)
			}
			if res.Pattern != strings.TrimSuffix(tc.pattern, "\n") || res.PipeLimit != strings.TrimSpace(tc.limit) {
				t.Errorf("Uninstall = %+v", res)
			}
			if _, err := os.Stat(state); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Uninstall kept the saved values: %v", err)
			}
		})
	}
}

// TestInstallOverOurs: corecatch's pattern is in place but the spool lost
// what it replaced; the only sane restore target is the kernel default.
func TestInstallOverOurs(t *testing.T) {
	proc := fakeProc(t, "|/old/place/corecatch collect -c /x "+patternArgs+"\n", "8\n")
	state := filepath.Join(t.TempDir(), "saved.json")
	res, err := Install(proc, state, ourPattern(t, "/usr/local/bin/corecatch"))
	if err != nil {
		t.Fatal(err)
	}
	if !res.AlreadyInstalled {
		t.Error("Install did not see corecatch's own pattern")
	}
	if _, err := Uninstall(proc, state); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(proc, patternFile)); string(got) != "core\n" {
		t.Errorf("restored core_pattern = %q, want the kernel default", got)
	}
	if got := readFile(t, filepath.Join(proc, pipeLimitFile)); string(got) != "8\n" {
		t.Errorf("restored core_pipe_limit = %q", got)
	}
}

func TestUninstallWithoutInstall(t *testing.T) {
	proc := fakeProc(t, "core\n", "0\n")
	if _, err := Uninstall(proc, filepath.Join(t.TempDir(), "saved.json")); err == nil || !strings.Contains(err.Error(), "--spool") {
		t.Errorf("Uninstall without saved values = %v, want an error naming --spool", err)
	}
	if got := readFile(t, filepath.Join(proc, patternFile)); string(got) != "core\n" {
		t.Errorf("Uninstall without saved values changed core_pattern to %q", got)
	}
}

func TestInstallMissingFiles(t *testing.T) {
	// No core_pattern in the directory.
	if _, err := Install(t.TempDir(), t.TempDir(), "|/usr/local/bin/corecatch collect"); err == nil || !strings.Contains(err.Error(), "kernel.core_pattern") {
		t.Errorf("Install without core_pattern = %v", err)
	}
}

func TestPattern(t *testing.T) {
	const bin, cfg = "/usr/local/bin/corecatch", "/var/lib/corecatch/spool/collect.yaml"
	p, err := Pattern(bin, cfg, patternArgs)
	if want := "|" + bin + " collect -c " + cfg + " " + patternArgs; err != nil || p != want {
		t.Errorf("Pattern = %q, %v; want %q", p, err, want)
	}
	if !IsOurs([]byte(p + "\n")) {
		t.Errorf("IsOurs(%q) = false", p)
	}
	// A config path that makes the pattern exactly the kernel's maximum.
	fit := "/" + strings.Repeat("c", MaxPattern-len("|"+bin+" collect -c / "+patternArgs))
	if p, err := Pattern(bin, fit, patternArgs); err != nil || len(p) != MaxPattern {
		t.Errorf("a pattern of exactly %d bytes: %d bytes, %v", MaxPattern, len(p), err)
	}
	for _, tc := range []struct {
		name, bin, cfg, mention string
	}{
		{"relative binary", "bin/corecatch", cfg, "absolute"},
		{"binary with a space", "/opt/core catch/corecatch", cfg, "spaces"},
		{"binary with a tab", "/opt/core\tcatch", cfg, "spaces"},
		{"config with a space", bin, "/etc/core catch.yaml", "spaces"},
		{"one byte too long", bin, fit + "c", "shorter path"},
		{"far too long", "/" + strings.Repeat("d", 200) + "/corecatch", cfg, "127"},
	} {
		if p, err := Pattern(tc.bin, tc.cfg, patternArgs); err == nil || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: Pattern = %q, %v; want an error mentioning %q", tc.name, p, err, tc.mention)
		}
	}
}

func TestIsOurs(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		want    bool
	}{
		{"|/usr/local/bin/corecatch collect -c /x %P\n", true},
		{"|/opt/corecatch-v2 collect %P", true},
		{"|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h\n", false},
		{"core\n", false},
		{"/usr/local/bin/corecatch collect\n", false}, // a file name, not a pipe
		{"|/usr/local/bin/corecatch\n", false},
		{"|/usr/local/bin/corecatch agent\n", false},
		{"|/usr/local/bin/notcorecatch collect\n", false},
		{"", false},
	} {
		if got := IsOurs([]byte(tc.pattern)); got != tc.want {
			t.Errorf("IsOurs(%q) = %v, want %v", tc.pattern, got, tc.want)
		}
	}
}

// TestCopyHelperOverRunningBinary replaces a helper that is running, as an
// upgrade does while the kernel runs the old one for a crash: writing into
// the running file fails with "text file busy", CopyHelper does not, the
// running process goes on, and a copy cut short by a kill earlier leaves
// nothing behind.
func TestCopyHelperOverRunningBinary(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bin") // CopyHelper creates it
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	old, err := CopyHelper(sleep, dir)
	if err != nil {
		t.Fatal(err)
	}
	if old != filepath.Join(dir, HelperName) {
		t.Errorf("CopyHelper installed %s, want %s", old, filepath.Join(dir, HelperName))
	}
	running := exec.Command(old, "30")
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	defer running.Process.Kill()
	if f, err := os.OpenFile(old, os.O_WRONLY, 0); !errors.Is(err, syscall.ETXTBSY) {
		f.Close()
		t.Fatalf("opening the running binary for writing: %v, want text file busy (the test would prove nothing)", err)
	}
	// A temporary file a killed copy left.
	if err := os.WriteFile(filepath.Join(dir, "."+HelperName+".tmp"), []byte("cut"), 0o600); err != nil {
		t.Fatal(err)
	}

	src, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CopyHelper(src, dir); err != nil {
		t.Fatalf("CopyHelper over a running binary: %v", err)
	}
	if got, want := readFile(t, old), readFile(t, src); !bytes.Equal(got, want) {
		t.Errorf("%s does not hold the new binary", old)
	}
	if fi, err := os.Stat(old); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("installed helper mode %v (%v), want 0755", fi.Mode(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%s holds %d files, want only the helper", dir, len(entries))
	}
	if err := running.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the running old helper died: %v", err)
	}
	if err := exec.Command(old).Run(); err != nil {
		t.Errorf("the new helper does not run: %v", err)
	}

	if err := RemoveHelper(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("RemoveHelper left %s (%v)", old, err)
	}
	if err := RemoveHelper(dir); err != nil {
		t.Errorf("RemoveHelper of nothing: %v", err)
	}
}

// TestInstalledConfig finds the config an installed corecatch pattern
// hands its helper, and nothing in anyone else's.
func TestInstalledConfig(t *testing.T) {
	for _, tc := range []struct{ pattern, want string }{
		{ourPattern(t, "/usr/local/bin/corecatch") + "\n", "/var/lib/corecatch/spool/collect.yaml"},
		{"|/home/kubernetes/bin/corecatch collect -c /var/lib/cc/spool/collect.yaml %P\n", "/var/lib/cc/spool/collect.yaml"},
		{"|/usr/local/bin/corecatch collect %P %I\n", ""},
		{"|/usr/share/apport/apport -p%p -c /etc/x -- %E\n", ""},
		{"core\n", ""},
	} {
		got, err := InstalledConfig(fakeProc(t, tc.pattern, "16\n"))
		if err != nil || got != tc.want {
			t.Errorf("InstalledConfig(%q) = %q, %v; want %q", tc.pattern, got, err, tc.want)
		}
	}
}
