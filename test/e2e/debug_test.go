package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corecatch/corecatch/test/harness"
)

// TestDebugRunsNoBundleScript: a container maps a Python script at
// "<exe>-gdb.py" (so the bundle's sysroot holds it beside the executable)
// and its executable carries a .debug_gdb_scripts section; the SRE's
// gdbinit widened auto-load's safe-path to /. gdb run as `corecatch debug`
// used to run it runs both scripts; `corecatch debug` runs neither, with
// or without --gdbinit, and only --trust-bundle lets them run.
func TestDebugRunsNoBundleScript(t *testing.T) {
	n := harness.Install(t, "")
	exe := harness.CC(t, n.Dir, "gdbscript", []string{"gdbscript.c"})
	marker := filepath.Join(n.Dir, "marker")
	script := exe + "-gdb.py"
	if err := os.WriteFile(script, []byte("import os\nopen(os.environ['CC_MARKER'] + '.file', 'w').close()\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(n.Dir, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".gdbinit"), []byte("set auto-load safe-path /\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("CC_MARKER", marker)

	cmd := exec.Command(exe, script)
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)
	captured := false
	for _, f := range m.Files {
		captured = captured || (f.Path == script && f.Stored != "")
	}
	if !captured {
		t.Fatalf("the bundle did not capture the mapped %s: %+v", script, m.Files)
	}
	cache := filepath.Join(n.Dir, "cache")
	ran := func() []string {
		t.Helper()
		var found []string
		for _, kind := range []string{"file", "section"} {
			if _, err := os.Stat(marker + "." + kind); err == nil {
				found = append(found, kind)
				os.Remove(marker + "." + kind)
			}
		}
		return found
	}
	bt := []string{"--", "-batch", "-ex", "bt"}
	for _, flags := range [][]string{nil, {"--gdbinit"}} {
		out := n.Run(append(append([]string{"debug", m.ID, "--cache", cache}, flags...), bt...)...)
		if !strings.Contains(out, "main") {
			t.Errorf("debug %v: bt does not show main:\n%s", flags, out)
		}
		if got := ran(); len(got) > 0 {
			t.Errorf("debug %v ran the bundle's scripts (%v):\n%s", flags, got, out)
		}
	}

	// The same bundle in gdb as debug used to start it: both scripts run,
	// so the input above is live.
	dir := filepath.Join(cache, m.ID)
	old := exec.Command("gdb", "-q", "-iex", "set sysroot "+filepath.Join(dir, "sysroot"), "-batch", "-ex", "bt",
		filepath.Join(dir, m.ExePath()), filepath.Join(dir, "core"))
	out, _ := old.CombinedOutput()
	if got := ran(); len(got) != 2 {
		t.Fatalf("plain gdb ran %v of the bundle's two scripts: the test's hostile input is not live:\n%s", got, out)
	}
	out2 := n.Run(append([]string{"debug", m.ID, "--cache", cache, "--gdbinit", "--trust-bundle"}, bt...)...)
	if got := ran(); len(got) != 2 {
		t.Errorf("debug --gdbinit --trust-bundle ran %v of the two scripts, want both:\n%s", got, out2)
	}
}
