package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// crashPod runs a pod whose container, once released, runs program in
// /trigger (its files copied there first, from files), and returns its
// analyzed bundle. The program is not the container's init: signals an
// init sends itself without a handler (abort's SIGABRT) are ignored.
func crashPod(t *testing.T, n *harness.Node, c *cri, name, program string, files []string, mounts []*runtimeapi.Mount) *bundle.Metadata {
	t.Helper()
	p := c.runPodExec(t, n.Dir, name, "runtimes", map[string]string{}, `/bin/sh -c "cd /trigger && `+program+`; sleep 1"`, mounts...)
	for _, f := range files {
		copyFile(t, f, filepath.Join(filepath.Dir(p.fifo), filepath.Base(f)))
		os.Chmod(filepath.Join(filepath.Dir(p.fifo), filepath.Base(f)), 0o755)
	}
	releaseFifo(t, p.fifo, time.Now().Add(10*time.Second))
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range n.Bundles() {
			if m.Cgroup == p.cgroup {
				return n.WaitAnalyzed(m.PID)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: no bundle of the container's cgroup %s after 60s", name, p.cgroup)
	return nil
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

// crasherFile is a file of test/crashers.
func crasherFile(name string) string {
	return filepath.Join(harness.RepoRoot(), "test", "crashers", name)
}

// TestTitleJVM crashes a real JVM (JDK 17) by writing through a null
// pointer with sun.misc.Unsafe: the JVM catches the SIGSEGV, writes its
// hs_err log and aborts; the title is the SIGSEGV in the application's
// Java method, from the log, not the abort or Unsafe_PutLong.
func TestTitleJVM(t *testing.T) {
	n, c := runtimeNode(t, "jvm")
	java := tool(t, "java")
	javac := tool(t, "javac")
	classes := filepath.Join(n.Dir, "classes")
	if out, err := exec.Command(javac, "-nowarn", "-d", classes, crasherFile("Crash.java")).CombinedOutput(); err != nil {
		t.Fatalf("javac: %v\n%s", err, out)
	}
	// A small heap and one GC thread keep the core small.
	flags := "-Xmx64m -XX:+UseSerialGC -XX:-UsePerfData"
	const want = "SIGSEGV in Crash.store (java)"
	cmd := exec.Command(java, append(strings.Fields(flags), "-cp", classes, "Crash")...)
	cmd.Dir = n.Dir // where the JVM writes hs_err_pid<pid>.log
	m := crashHost(t, n, cmd, false)
	checkTitle(t, "host", m, want)
	if _, err := os.Stat(filepath.Join(n.BundleDir(m.ID), bundle.HsErrLog(m.NSPID))); err != nil {
		t.Errorf("host: the bundle lacks the hs_err log: %v", err)
	}
	// The JDK's launcher, by its real path (/usr/bin/java is an
	// alternatives link into /etc), and its configuration in /etc.
	real, err := filepath.EvalSymlinks(java)
	if err != nil {
		t.Fatal(err)
	}
	etc, _ := filepath.Glob("/etc/java-*")
	m = crashPod(t, n, c, "jvm", real+" "+flags+" -cp /trigger Crash",
		[]string{filepath.Join(classes, "Crash.class")}, hostRuntime(etc...))
	checkTitle(t, "container", m, want)
	var frames []string
	for _, f := range m.Analysis.Script {
		frames = append(frames, f.Function)
	}
	if !strings.Contains(strings.Join(frames, " "), "Crash.store Crash.main") {
		t.Errorf("container: Java frames %q, want Crash.store then Crash.main", frames)
	}
}

// TestTitleNode aborts a real Node.js program from a JavaScript function
// (process.abort()): the title names the top JavaScript frame from the
// stack Node printed, from the container's log, or from a host process's
// stderr when that is a file. Without any log (a host process writing to
// a terminal or a pipe) the title falls back to Node's native frame,
// node::Abort.
func TestTitleNode(t *testing.T) {
	n, c := runtimeNode(t, "node")
	node := tool(t, "node")
	const want = "SIGABRT in parseHeader (jscrash.js:4)"
	checkTitle(t, "host, stderr in a file", crashHost(t, n, exec.Command(node, crasherFile("jscrash.js")), true), want)
	m := crashHost(t, n, exec.Command(node, crasherFile("jscrash.js")), false)
	checkTitle(t, "host, no log", m, "SIGABRT in node::Abort(v8::FunctionCallbackInfo<v8::Value> const&) (node)")
	m = crashPod(t, n, c, "node", node+" /trigger/jscrash.js", []string{crasherFile("jscrash.js")}, hostRuntime())
	checkTitle(t, "container", m, want)
	if s := m.Analysis.Script; len(s) < 3 || s[0] != (bundle.Frame{Function: "parseHeader", File: "/trigger/jscrash.js", Line: 4, Module: "javascript"}) ||
		s[1].Function != "main" {
		t.Errorf("container: JavaScript stack %+v, want parseHeader, main from jscrash.js", s)
	}
}

// TestTitlePython crashes a real Python program in a C extension
// (ctypes.string_at(0)): the title is ctypes' string_at, not the C
// library's strlen it called, and with Debian's python3.11-dbg installed
// where the agent runs the bundle holds the Python stack, file and line.
func TestTitlePython(t *testing.T) {
	n, c := runtimeNode(t, "python")
	// Debian's interpreter, whose gdb helpers and debug info
	// python3.11-dbg installs (not a pyenv one in PATH).
	const python = "/usr/bin/python3.11"
	const want = "SIGSEGV in string_at (_ctypes.cpython-311-x86_64-linux-gnu.so)"
	check := func(what string, m *bundle.Metadata, file string) {
		t.Helper()
		checkTitle(t, what, m, want)
		var script []string
		for _, f := range m.Analysis.Script {
			script = append(script, fmt.Sprintf("%s:%d %s", f.File, f.Line, f.Function))
		}
		if len(script) < 3 || !strings.HasSuffix(script[1], file+":6 read_name") || !strings.HasSuffix(script[2], file+":10 main") {
			t.Errorf("%s: Python stack %q, want string_at, then read_name and main in %s", what, script, file)
		}
	}
	check("host", crashHost(t, n, exec.Command(python, crasherFile("pycrash.py")), false), crasherFile("pycrash.py"))
	m := crashPod(t, n, c, "python", python+" /trigger/pycrash.py", []string{crasherFile("pycrash.py")}, hostRuntime())
	check("container", m, "/trigger/pycrash.py")
}
