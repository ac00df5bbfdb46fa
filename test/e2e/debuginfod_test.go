package e2e

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/analysis"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// run runs a command of the test's and fails the test with its output
// when it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// exeBuildID returns the build-id the bundle recorded for its executable.
func exeBuildID(t *testing.T, m *bundle.Metadata) string {
	t.Helper()
	for _, f := range m.Files {
		if f.Role == "exe" && f.BuildID != "" {
			return f.BuildID
		}
	}
	t.Fatalf("bundle %s: no executable with a build-id: %+v", m.ID, m.Files)
	return ""
}

// TestDebuginfod: a stripped C program whose debug file only a local
// debuginfod (Debian's, on loopback, indexing a directory of debug files
// the test made with objcopy --only-keep-debug) holds crashes: after the
// agent's gdb pass its bundle's backtrace has functions, files and lines.
// Then `corecatch debuginfod` serves the store's files by build-id to a
// real client, debuginfod-find: the exact executable, its debug info only
// when it has DWARF, and 404 for what no bundle holds.
func TestDebuginfod(t *testing.T) {
	for _, tool := range []string{"debuginfod", "debuginfod-find", "objcopy", "strip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run make deps", tool)
		}
	}
	dir := harness.TempDir(t, "ccdbginfod")
	debug := filepath.Join(dir, "debug")
	if err := os.Mkdir(debug, 0o755); err != nil {
		t.Fatal(err)
	}
	full := buildSignals(t, dir)
	stripped := filepath.Join(dir, "stripped", "signals")
	os.MkdirAll(filepath.Dir(stripped), 0o755)
	run(t, "objcopy", "--only-keep-debug", full, filepath.Join(debug, "signals.debug"))
	run(t, "strip", "--strip-all", "-o", stripped, full)

	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	// -t 0: one scan at start, none after; the test waits for it.
	srv := startService(t, dir, addr, "/metrics", "debuginfod", "-F", "-p", port, "-t", "0", "-g", "0",
		"-d", filepath.Join(dir, "debuginfod.sqlite"), debug)

	f, err := os.Open(stripped)
	if err != nil {
		t.Fatal(err)
	}
	id := analysis.BuildID(f)
	f.Close()
	// The debuginfod must have indexed the debug file before the crash.
	err = within(30*time.Second, func() error {
		resp, err := http.Get(srv.base + "/buildid/" + id + "/debuginfo")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Debian's debuginfod did not index %s (build-id %s): %v\n%s", debug, id, err, srv.logTail())
	}

	n, _, _, _ := agentNode(t, "dbginfod", "analysis:\n  debuginfod_urls: "+srv.base+"\n")
	cmd := exec.Command(stripped, "segv")
	n.Crash(cmd)
	m := n.WaitAnalyzed(cmd.Process.Pid)
	found := false
	for _, f := range m.Backtrace {
		if f.Function == "crash_segv" && strings.HasSuffix(f.File, "signals.c") && f.Line > 0 {
			found = true
		}
	}
	if !found || m.Analysis == nil || m.Analysis.Unwinder != "gdb" {
		t.Errorf("stripped program's backtrace after gdb with debuginfod: %v (analysis %+v), want crash_segv at signals.c:N", m.Backtrace, m.Analysis)
	}
	if m.Title != "SIGSEGV in crash_segv (signals)" {
		t.Errorf("title %q", m.Title)
	}

	// corecatch debuginfod on the store, and a real client.
	// Another program, unstripped: its own debug info.
	other := harness.CC(t, dir, "twobugs", []string{"twobugs.c"})
	cmd = exec.Command(other, "header")
	n.Crash(cmd)
	unstripped := n.WaitBundle(cmd.Process.Pid)
	own := freeAddr(t)
	server := exec.Command(n.Bin, "--config", n.Config, "debuginfod", "--listen", own)
	var log bytes.Buffer
	server.Stdout, server.Stderr = &log, &log
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Process.Kill(); server.Wait() })
	if err := within(10*time.Second, func() error {
		c, err := net.Dial("tcp", own)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("corecatch debuginfod does not listen on %s: %v\n%s", own, err, log.String())
	}
	find := func(kind, id string) (string, error) {
		c := exec.Command("debuginfod-find", kind, id)
		c.Env = append(os.Environ(), "DEBUGINFOD_URLS=http://"+own, "DEBUGINFOD_CACHE_PATH="+filepath.Join(dir, "client-cache"))
		out, err := c.Output()
		return strings.TrimSpace(string(out)), err
	}
	same := func(what, got, want string) {
		t.Helper()
		a, _ := os.ReadFile(got)
		b, _ := os.ReadFile(want)
		if len(a) == 0 || sha256.Sum256(a) != sha256.Sum256(b) {
			t.Errorf("%s: debuginfod-find gave %s (%d bytes), not the bytes of %s", what, got, len(a), want)
		}
	}
	if path, err := find("executable", id); err != nil {
		t.Errorf("debuginfod-find executable %s: %v", id, err)
	} else {
		same("stripped executable", path, stripped)
	}
	if path, err := find("debuginfo", id); err == nil {
		t.Errorf("debuginfod-find debuginfo of a stripped executable gave %s, want 404", path)
	}
	fullID := exeBuildID(t, unstripped)
	if path, err := find("debuginfo", fullID); err != nil {
		t.Errorf("debuginfod-find debuginfo %s (an unstripped program): %v", fullID, err)
	} else {
		same("unstripped executable as its debuginfo", path, other)
	}
	if path, err := find("executable", strings.Repeat("ab", 20)); err == nil {
		t.Errorf("an unknown build-id gave %s, want 404", path)
	}
}
