package agent

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"
)

// TestLeaveNode stops an agent that installed the coredump socket's
// pattern, for each answer of the API server (the one thing faked: no
// cluster here): at SIGTERM with the DaemonSet living on, core_pattern
// goes back to the pipe helper and the saved sysctls stay for the next
// agent; at SIGTERM with the DaemonSet gone, and at SIGINT without asking,
// the node gets back what install replaced. The kernel's files are a
// directory of the test's, as in pkg/sysctl's tests.
func TestLeaveNode(t *testing.T) {
	const oldPattern = "core\n"
	for _, tc := range []struct {
		name    string
		sig     os.Signal
		livesOn bool
		kept    bool
	}{
		{"rolling update", syscall.SIGTERM, true, true},
		{"daemonset deleted", syscall.SIGTERM, false, false},
		{"interrupted", syscall.SIGINT, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testInstallConfig(t, oldPattern)
			if _, err := Install(cfg, true); err != nil {
				t.Fatal(err)
			}
			if got := string(readOrFatal(t, filepath.Join(cfg.Host.ProcSysKernel, "core_pattern"))); !strings.HasPrefix(got, "@@") {
				t.Fatalf("core_pattern %q after the socket install, want the coredump socket's", got)
			}
			asked := false
			leaveNode(cfg, tc.sig, func() (bool, string) { asked = true; return tc.livesOn, "test" }, zap.NewNop())
			if asked != (tc.sig == syscall.SIGTERM) {
				t.Errorf("the API server asked: %v, at %v", asked, tc.sig)
			}
			got := readOrFatal(t, filepath.Join(cfg.Host.ProcSysKernel, "core_pattern"))
			_, stateErr := os.Stat(spool.Open(cfg.Spool).SysctlState())
			if tc.kept {
				if !strings.HasPrefix(string(got), "|") || !strings.Contains(string(got), " collect -c "+spool.Open(cfg.Spool).HelperConfig()) {
					t.Errorf("core_pattern %q, want the pipe helper's for the next agent", got)
				}
				if stateErr != nil {
					t.Errorf("the saved sysctls are gone; the next agent could not restore them: %v", stateErr)
				}
				return
			}
			if string(got) != oldPattern {
				t.Errorf("core_pattern %q, want the replaced %q", got, oldPattern)
			}
			if !os.IsNotExist(stateErr) {
				t.Errorf("the saved sysctls are still in the spool: %v", stateErr)
			}
		})
	}
}

// testInstallConfig is a config whose store, spool and kernel files
// (holding pattern, and a core_pipe_limit of 0) are the test's.
func testInstallConfig(t *testing.T, pattern string) *config.Config {
	t.Helper()
	proc := t.TempDir()
	for name, data := range map[string]string{"core_pattern": pattern, "core_pipe_limit": "0\n"} {
		if err := os.WriteFile(filepath.Join(proc, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Short paths: the patterns must fit the kernel's 127 bytes.
	short, err := os.MkdirTemp("/tmp", "ccl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	cfg := config.Default()
	cfg.Store = "file://" + t.TempDir()
	cfg.Spool = filepath.Join(short, "s")
	cfg.CoredumpSocket = filepath.Join(short, "c.sock")
	cfg.Host.ProcSysKernel = proc
	return cfg
}
