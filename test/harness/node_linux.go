package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// Node is corecatch installed on this machine for one test, with its own
// store, spool and config in a temporary directory.
type Node struct {
	t      testing.TB
	Bin    string // the corecatch binary
	Dir    string // the test's directory
	Store  string // the store directory
	Spool  string
	Config string // the config file passed with --config
}

// Install takes the privileged lock (see Privileged), writes a config of
// defaults plus extraYAML (extra top-level YAML, e.g. "collect:\n
// max_core_bytes: 1MiB\n"; with a store: line of its own, such as
// S3Server.Config's, it replaces the file store), and runs `corecatch
// install`. The test's cleanup restores the kernel's previous settings.
func Install(t testing.TB, extraYAML string) *Node {
	t.Helper()
	Privileged(t)
	dir := TempDir(t, "cce2e")
	n := &Node{t: t, Bin: Binary(t), Dir: dir,
		Store: filepath.Join(dir, "store"), Spool: filepath.Join(dir, "spool"),
		Config: filepath.Join(dir, "config.yaml")}
	cfg := fmt.Sprintf("spool: %s\n%s", n.Spool, extraYAML)
	if !strings.HasPrefix(extraYAML, "store:") && !strings.Contains(extraYAML, "\nstore:") {
		cfg = fmt.Sprintf("store: file://%s\n%s", n.Store, cfg)
	}
	if err := os.WriteFile(n.Config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	n.Run("install")
	return n
}

// TempDir makes a directory in the system's temporary directory (a short
// path: core_pattern names paths in it) that the test's cleanup removes, or
// keeps for inspection when the test failed.
func TempDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(dir)
		} else {
			t.Logf("kept %s for inspection", dir)
		}
	})
	return dir
}

// Attach returns the Node of a config that something other than Install
// set up (an agent run as its pod runs it), for Run, Crash and WaitBundle.
// The caller holds the privileged lock (Privileged).
func Attach(t testing.TB, dir, config, store, spool string) *Node {
	return &Node{t: t, Bin: Binary(t), Dir: dir, Store: store, Spool: spool, Config: config}
}

// Run runs corecatch with --config and args, failing the test on error,
// and returns its standard output.
func (n *Node) Run(args ...string) string {
	n.t.Helper()
	out, err := n.Try(args...)
	if err != nil {
		n.t.Fatalf("corecatch %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs corecatch with --config and args and returns its combined
// output and error.
func (n *Node) Try(args ...string) (string, error) {
	cmd := exec.Command(n.Bin, append([]string{"--config", n.Config}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Crash runs a program that is expected to die of a core signal, waits
// for it and returns its exit state. The kernel holds a crashed
// process until the helper lets go of the core pipe, so when Crash returns
// the core is in the helper's hands, not necessarily stored: use WaitBundle.
func (n *Node) Crash(cmd *exec.Cmd) *os.ProcessState {
	n.t.Helper()
	err := cmd.Run()
	if cmd.ProcessState == nil {
		n.t.Fatalf("start %s: %v", cmd.Path, err)
	}
	// Died of its signal; a duplicate refused by the agent's coredump
	// socket dumps no core (the bundle says so), so a core is not required.
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() {
		n.t.Fatalf("%s exited with %v, not of a signal (err %v)", cmd.Path, cmd.ProcessState, err)
	}
	return cmd.ProcessState
}

// Bundles lists the store's bundles through `corecatch ls --json`.
func (n *Node) Bundles() []*bundle.Metadata {
	n.t.Helper()
	var list []*bundle.Metadata
	if err := json.Unmarshal([]byte(n.Run("ls", "--json")), &list); err != nil {
		n.t.Fatalf("ls --json: %v", err)
	}
	return list
}

// WaitBundle waits until a bundle of pid is published and returns it.
func (n *Node) WaitBundle(pid int) *bundle.Metadata {
	n.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range n.Bundles() {
			if m.PID == pid {
				return m
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.t.Fatalf("no bundle for pid %d after 60s; kernel log:\n%s", pid, kmsgTail())
	return nil
}

// WaitAnalyzed waits until a bundle of pid is published and its full
// unwind (gdb, after publication) has ended, and returns it.
func (n *Node) WaitAnalyzed(pid int) *bundle.Metadata {
	n.t.Helper()
	m := n.WaitBundle(pid)
	deadline := time.Now().Add(60 * time.Second)
	for m.Analysis != nil && m.Analysis.Pending {
		if time.Now().After(deadline) {
			n.t.Fatalf("bundle %s: analysis still pending after 60s", m.ID)
		}
		time.Sleep(100 * time.Millisecond)
		m = n.WaitBundle(pid)
	}
	return m
}

// Pull materializes a bundle into a fresh directory and returns it.
func (n *Node) Pull(id string) string {
	n.t.Helper()
	dir := filepath.Join(n.Dir, "pull-"+id)
	n.Run("pull", id, "--out", dir)
	return dir
}

// BundleDir returns where a bundle lives in the file store.
func (n *Node) BundleDir(id string) string {
	rel, err := bundle.Dir(id)
	if err != nil {
		n.t.Fatal(err)
	}
	return filepath.Join(n.Store, rel)
}

func kmsgTail() string {
	out, _ := exec.Command("dmesg").Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.Join(lines[max(0, len(lines)-15):], "\n")
}
