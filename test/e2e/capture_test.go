package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// TestCaptureExtras checks what a bundle holds beside the core and the
// binaries: a JVM's hs_err log from the working directory (never through a
// symlink the process planted), whose problematic frame titles the crash, the environment only when configured, and
// that `corecatch debug` itself lands in gdb on the right frame.
func TestCaptureExtras(t *testing.T) {
	const secret = "CORECATCH_TEST_SECRET=swordfish"
	crash := func(t *testing.T, n *harness.Node, args ...string) *bundle.Metadata {
		t.Helper()
		work := filepath.Join(n.Dir, "work")
		if err := os.MkdirAll(work, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(harness.CC(t, n.Dir, "hserr", []string{"hserr.c"}), args...)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), secret)
		n.Crash(cmd)
		return n.WaitBundle(cmd.Process.Pid)
	}
	read := func(n *harness.Node, m *bundle.Metadata, name string) (string, error) {
		data, err := os.ReadFile(filepath.Join(n.BundleDir(m.ID), name))
		return string(data), err
	}

	t.Run("defaults", func(t *testing.T) {
		n := harness.Install(t, "")
		m := crash(t, n, "file")
		log, err := read(n, m, fmt.Sprintf("hs_err_pid%d.log", m.NSPID))
		if err != nil || !strings.Contains(log, fmt.Sprintf("marker-%d", m.PID)) {
			t.Errorf("hs_err log not kept (%v): %q", err, log)
		}
		if _, err := read(n, m, bundle.ProcDir+"/environ"); !os.IsNotExist(err) {
			t.Errorf("proc/environ kept by default (stat: %v)", err)
		}
		// The JVM aborts after reporting: its log says where it crashed,
		// and of which signal.
		if want := "SIGSEGV in parse_header (libfoo.so)"; m.Title != want {
			t.Errorf("title %q, want %q from the hs_err log's problematic frame", m.Title, want)
		}
		out := n.Run("debug", "--cache", filepath.Join(n.Dir, "cache"), m.ID, "--", "-batch", "-ex", "bt")
		if !strings.Contains(out, "write_and_die") {
			t.Errorf("corecatch debug: bt lacks write_and_die:\n%s", out)
		}
	})
	t.Run("symlinked hs_err", func(t *testing.T) {
		n := harness.Install(t, "")
		host := filepath.Join(n.Dir, "host-secret")
		if err := os.WriteFile(host, []byte("host-only-marker"), 0o600); err != nil {
			t.Fatal(err)
		}
		m := crash(t, n, "symlink", host)
		if _, err := read(n, m, fmt.Sprintf("hs_err_pid%d.log", m.NSPID)); !os.IsNotExist(err) {
			t.Errorf("a symlinked hs_err log was followed (stat: %v)", err)
		}
		checkNoMarker(t, n.BundleDir(m.ID), "host-only-marker")
	})
	t.Run("capture_environ", func(t *testing.T) {
		n := harness.Install(t, "collect:\n  capture_environ: true\n")
		m := crash(t, n, "file")
		env, err := read(n, m, bundle.ProcDir+"/environ")
		if err != nil || !strings.Contains(env, secret) {
			t.Errorf("proc/environ lacks the environment (%v)", err)
		}
	})
}
