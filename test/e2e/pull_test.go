package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/test/coregen"
	"github.com/corecatch/corecatch/test/harness"
)

// pullSetup starts an S3 service holding one bundle whose core is a
// SyntheticCore of size bytes, and returns the config file that reaches it
// and the bundle.
func pullSetup(t *testing.T, size int64) (string, *bundle.Metadata) {
	t.Helper()
	srv := harness.S3(t)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	spool := filepath.Join(t.TempDir(), "spool")
	if err := os.WriteFile(cfg, []byte(srv.Config("pull")+"spool: "+spool+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open("s3://"+srv.Bucket+"/pull", store.Options{S3: store.S3Options{
		Endpoint: srv.Endpoint(), Region: "us-east-1", PathStyle: true, CredentialsFile: srv.Credentials}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := coregen.PutCoreBundle(context.Background(), st, coregen.SyntheticCore(size, 1))
	if err != nil {
		t.Fatal(err)
	}
	return cfg, m
}

// checkCore compares a pulled core with the SyntheticCore it was made of,
// byte for byte, and checks that it is sparse: its zero blocks are holes.
func checkCore(t *testing.T, dir string, size int64) {
	t.Helper()
	p := filepath.Join(dir, "core")
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := coregen.SyntheticCore(size, 1)
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	var off int64
	for {
		n, err := io.ReadFull(f, a)
		m, _ := io.ReadFull(want, b[:max(n, 1)])
		if n != m && !(n == 0 && m == 1) || !bytes.Equal(a[:n], b[:n]) {
			t.Fatalf("core differs from the original in the MiB at %d", off)
		}
		off += int64(n)
		if err != nil {
			break
		}
	}
	if off != size {
		t.Fatalf("core has %d bytes, want %d", off, size)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	// One block in three is zeros: allocated is about two thirds.
	if alloc := st.Blocks * 512; alloc > size*3/4 {
		t.Errorf("core takes %d bytes on disk for %d bytes: not sparse", alloc, size)
	}
	for _, part := range []string{".core" + store.PartSuffix, ".core" + store.PartSuffix + ".log"} {
		if _, err := os.Stat(filepath.Join(dir, part)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left after a whole pull (%v)", part, err)
		}
	}
}

// runInTerminal runs corecatch with its stdin, stdout and stderr on a
// pseudo-terminal and returns all it wrote.
func runInTerminal(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(harness.Binary(t), args...)
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 120})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var out bytes.Buffer
	io.Copy(&out, tty) // ends with EIO once the process is gone
	if err := cmd.Wait(); err != nil {
		t.Fatalf("corecatch %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// TestPullProgress: on a terminal pull draws a progress bar (bytes, rate,
// time left) and ends with the bundle's core in place; piped, it prints
// no progress at all.
func TestPullProgress(t *testing.T) {
	const size = 96 << 20
	cfg, m := pullSetup(t, size)
	dir := filepath.Join(t.TempDir(), "tty")
	out := runInTerminal(t, "--config", cfg, "pull", m.ID, "--out", dir)
	// Frames redraw the line; while it runs each ends with [elapsed:left],
	// and the last gives the bytes of the total and the rate.
	frame := `\rpull ` + m.ID + ` +[0-9]+% \|[^|]*\| `
	for what, re := range map[string]string{
		"time left":      frame + `\([^)]*\) \[[0-9hms]+:[0-9hms]+\]`,
		"bytes and rate": frame + `\([0-9.]+/[0-9.]+ MiB, [0-9.]+ [KMG]iB/s\) \[[0-9hms]+\]\r\n`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("pull on a terminal drew no progress bar with its %s:\n%q", what, out)
		}
	}
	checkCore(t, dir, size)

	dir = filepath.Join(t.TempDir(), "piped")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(harness.Binary(t), "--config", cfg, "pull", m.ID, "--out", dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("pull: %v\n%s%s", err, &stdout, &stderr)
	}
	if stderr.Len() != 0 || strings.ContainsAny(stdout.String(), "\r%") || stdout.String() != "pulled "+m.ID+" into "+dir+"\n" {
		t.Errorf("pull piped printed progress or more:\nstdout %q\nstderr %q", &stdout, &stderr)
	}
	checkCore(t, dir, size)
}

// TestPullResumesAfterKill kills a pull (SIGKILL) half way through its
// core, runs it again into the same directory, and checks that the second
// run continued from what the first kept and made a byte-exact, sparse
// core.
func TestPullResumesAfterKill(t *testing.T) {
	const size = 768 << 20
	cfg, m := pullSetup(t, size)
	dir := filepath.Join(t.TempDir(), "out")
	log := filepath.Join(dir, ".core"+store.PartSuffix+".log")
	cmd := exec.Command(harness.Binary(t), "--config", cfg, "pull", m.ID, "--out", dir, "--parallel", "2")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	frames := func() int {
		b, _ := os.ReadFile(log)
		return strings.Count(string(b), "\nframe ")
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && frames() < 3; time.Sleep(2 * time.Millisecond) {
	}
	cmd.Process.Kill()
	cmd.Wait()
	all := (size + bundle.CoreFrameBytes - 1) / bundle.CoreFrameBytes
	done := frames()
	if done == 0 || done == all {
		t.Fatalf("the killed pull had done %d of %d frames: not killed half way", done, all)
	}
	t.Logf("killed with %d of %d frames done", done, all)
	out := runInTerminal(t, "--config", cfg, "pull", m.ID, "--out", dir)
	if !strings.Contains(out, "continued") {
		t.Errorf("the second pull did not continue the first:\n%q", out)
	}
	checkCore(t, dir, size)
}
