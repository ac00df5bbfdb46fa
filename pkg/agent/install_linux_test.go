package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/sysctl"
)

// TestUninstallFindsSpool installs with one spool and a helper copy in
// host.bin_dir, then uninstalls with a config that names neither (the
// defaults, as an SRE's bare `sudo corecatch uninstall`): the installed
// core_pattern leads to install's spool, the replaced sysctls come back
// byte for byte, and the copy is removed. The kernel's files are a
// directory of the test's, as in pkg/sysctl's tests.
func TestUninstallFindsSpool(t *testing.T) {
	const oldPattern, oldLimit = "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t 9223372036854775808 %h\n", "0\n"
	cfg := testInstallConfig(t, oldPattern)
	proc := cfg.Host.ProcSysKernel
	cfg.Host.BinDir = filepath.Join(filepath.Dir(cfg.Spool), "b")
	if _, err := Install(cfg, false); err != nil {
		t.Fatal(err)
	}
	if !sysctl.IsOurs(readOrFatal(t, filepath.Join(proc, "core_pattern"))) {
		t.Fatal("install did not set corecatch's pattern")
	}
	bare := config.Default()
	bare.Host.ProcSysKernel = proc
	res, err := Uninstall(bare)
	if err != nil {
		t.Fatalf("uninstall without install's spool: %v", err)
	}
	if got := string(readOrFatal(t, filepath.Join(proc, "core_pattern"))); got != oldPattern {
		t.Errorf("core_pattern %q after uninstall, want %q (result %+v)", got, oldPattern, res)
	}
	if got := string(readOrFatal(t, filepath.Join(proc, "core_pipe_limit"))); got != oldLimit {
		t.Errorf("core_pipe_limit %q after uninstall, want %q", got, oldLimit)
	}
	if _, err := os.Stat(spool.Open(cfg.Spool).SysctlState()); !os.IsNotExist(err) {
		t.Errorf("the saved sysctls are still in install's spool: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Host.BinDir, sysctl.HelperName)); !os.IsNotExist(err) {
		t.Errorf("the helper copy is still in host.bin_dir: %v", err)
	}
	// Nothing installed any more: uninstall says so, as before.
	if _, err := Uninstall(bare); err == nil {
		t.Error("a second uninstall found something to restore")
	}
}

func readOrFatal(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
