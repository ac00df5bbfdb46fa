package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corecatch/corecatch/test/harness"
)

// TestSmoke is the shortest real path: install, crash, list, debug.
func TestSmoke(t *testing.T) {
	n := harness.Install(t, "")
	exe := harness.CC(t, n.Dir, "segv", []string{"segv.c"})
	cmd := exec.Command(exe)
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)
	if m.SignalName != "SIGSEGV" || m.Core.Truncated {
		t.Fatalf("bundle %+v", m)
	}
	out := n.Run("debug", "--cache", filepath.Join(n.Dir, "cache"), m.ID, "--", "-batch", "-ex", "bt")
	if !strings.Contains(out, "crash_here") {
		t.Fatalf("gdb bt lacks crash_here:\n%s", out)
	}
}
