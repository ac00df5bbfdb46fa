package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// runtimeNode installs corecatch with an agent (for gdb's unwind) and a
// private containerd with its CRI plugin, whose pods' logs the bundles
// hold, and no deduplication. name tells tests' sockets apart.
func runtimeNode(t *testing.T, name string) (*harness.Node, *cri) {
	t.Helper()
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("cc%s-%d.sock", name, os.Getpid()))
	n := harness.Install(t, "socket: "+socket+"\n")
	t.Cleanup(func() { os.Remove(socket) })
	c := startCRI(t, n.Dir)
	// Every crash keeps its core, so that gdb unwinds each.
	limReconfigure(t, n, "socket: "+socket+"\ndedup:\n  window: 0s\nidentity:\n  cri_endpoint: unix://"+c.addr+"\n")
	startAgent(t, n, socket)
	return n, c
}

// hostRuntime are the mounts that give a container the host's runtimes
// (its /usr, read-only, with /lib and /lib64 as a merged-/usr host has
// them): the JDK, Node.js and Python need hundreds of files each.
func hostRuntime(extra ...string) []*runtimeapi.Mount {
	mounts := []*runtimeapi.Mount{
		{ContainerPath: "/usr", HostPath: "/usr", Readonly: true},
		{ContainerPath: "/lib", HostPath: "/usr/lib", Readonly: true},
		{ContainerPath: "/lib64", HostPath: "/usr/lib64", Readonly: true},
	}
	for _, p := range extra {
		mounts = append(mounts, &runtimeapi.Mount{ContainerPath: p, HostPath: p, Readonly: true})
	}
	return mounts
}

// crashPod runs a pod whose container, once released, runs program (its
// files copied into the pod's /trigger first, from files), and returns
// its analyzed bundle.
func crashPod(t *testing.T, n *harness.Node, c *cri, name, program string, files []string, mounts []*runtimeapi.Mount) *bundle.Metadata {
	t.Helper()
	p := c.runPodExec(t, n.Dir, name, "runtimes", map[string]string{}, program, mounts...)
	for _, f := range files {
		copyFile(t, f, filepath.Join(filepath.Dir(p.fifo), filepath.Base(f)))
		os.Chmod(filepath.Join(filepath.Dir(p.fifo), filepath.Base(f)), 0o755)
	}
	releaseFifo(t, p.fifo, time.Now().Add(10*time.Second))
	m := n.WaitAnalyzed(p.pid)
	if m.Cgroup != p.cgroup {
		t.Errorf("%s: bundle's cgroup %q, want the container's %q", name, m.Cgroup, p.cgroup)
	}
	return m
}

// crashHost runs cmd on the host, with its stderr into a file of its own
// when stderrFile, and returns its analyzed bundle.
func crashHost(t *testing.T, n *harness.Node, cmd *exec.Cmd, stderrFile bool) *bundle.Metadata {
	t.Helper()
	if stderrFile {
		f, err := os.Create(filepath.Join(n.Dir, fmt.Sprintf("stderr-%d.log", time.Now().UnixNano())))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stderr = f
	}
	n.Crash(cmd)
	return n.WaitAnalyzed(cmd.Process.Pid)
}

// checkTitle checks a bundle's title, and that gdb unwound it.
func checkTitle(t *testing.T, what string, m *bundle.Metadata, want string) {
	t.Helper()
	if m.Title != want {
		t.Errorf("%s: title %q, want %q; backtrace %v", what, m.Title, want, m.Backtrace)
	}
	if m.Analysis == nil || m.Analysis.Unwinder != "gdb" {
		t.Errorf("%s: analysis %+v, want gdb's", what, m.Analysis)
	}
	t.Logf("%s: %s", what, m.Title)
}

// tool finds a runtime's command in PATH or in the given places (sudo's
// PATH lacks rustup's).
func tool(t *testing.T, name string, places ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, p := range places {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("%s is not installed (looked in PATH and %v)", name, places)
	return ""
}

// TestTitleRust crashes a real Rust program built with panic=abort and
// with the default unwinding, on the host and in a container: the title
// names the panicking function, not Rust's panic or abort machinery, with
// the panic message when the bundle holds the log it went to.
func TestTitleRust(t *testing.T) {
	n, c := runtimeNode(t, "rust")
	rustc := tool(t, "rustc", "/root/.cargo/bin/rustc", filepath.Join(os.Getenv("HOME"), ".cargo/bin/rustc"))
	build := func(panic string) string {
		dir := filepath.Join(n.Dir, "rust-"+panic)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		exe := filepath.Join(dir, "rcrash")
		cmd := exec.Command(rustc, "-g", "-C", "opt-level=0", "-C", "panic="+panic, "-o", exe,
			filepath.Join(harness.RepoRoot(), "test", "crashers", "rcrash", "main.rs"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("rustc: %v\n%s", err, out)
		}
		return exe
	}
	abort, unwind := build("abort"), build("unwind")
	const msg = ": header length is not a number: ParseIntError { kind: InvalidDigit }"
	run := func(exe string, args ...string) *exec.Cmd {
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), "RUST_BACKTRACE=0")
		return cmd
	}
	for _, tc := range []struct {
		what, exe string
		args      []string
		stderr    bool
		want      string
	}{
		{"panic=abort, stderr in a file", abort, []string{"parse", "x"}, true, "panic in main::parse (rcrash)" + msg},
		{"panic=abort, no log", abort, []string{"parse", "x"}, false, "panic in main::parse (rcrash)"},
		{"panic in extern C", unwind, []string{"ffi", "x"}, true, "panic in main::ffi_parse (rcrash)" + msg},
		{"caught, then abort", unwind, []string{"abort", "x"}, true, "SIGABRT in main::give_up (rcrash)"},
	} {
		checkTitle(t, "host: "+tc.what, crashHost(t, n, run(tc.exe, tc.args...), tc.stderr), tc.want)
	}
	m := crashPod(t, n, c, "rust-abort", "/trigger/rcrash parse x", []string{abort}, hostRuntime())
	checkTitle(t, "container: panic=abort", m, "panic in main::parse (rcrash)"+msg)
	m = crashPod(t, n, c, "rust-ffi", "/trigger/rcrash ffi x", []string{unwind}, hostRuntime())
	checkTitle(t, "container: panic in extern C", m, "panic in main::ffi_parse (rcrash)"+msg)
}
