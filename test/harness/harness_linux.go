// Package harness is the one way privileged tests get root-only resources:
// it requires root (and, under CI=true, fails rather than skips without it),
// serialises every test that touches global kernel state across test
// binaries, and restores that state whatever the test does.
package harness

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// lockPath serialises privileged tests across `go test` package binaries,
// which run in parallel processes.
const lockPath = "/run/corecatch-tests.lock"

// Kernel files a privileged test may change; Privileged restores each.
var kernelFiles = []string{
	"/proc/sys/kernel/core_pattern",
	"/proc/sys/kernel/core_pipe_limit",
}

// RequireRoot skips a test that needs root, except under CI=true, where a
// privileged test must run or fail.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root and CI=true forbids skipping it: run the tests as root (sudo make test)")
	}
	t.Skip("needs root (sudo make test)")
}

// Privileged makes a test that changes kernel state safe: it requires root,
// takes the global test lock for the test's duration, and restores
// core_pattern and core_pipe_limit byte for byte when the test ends, even
// when it fails or panics.
func Privileged(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	unlock, err := LockKernel()
	if err != nil {
		t.Fatal(err)
	}
	restore, err := SaveKernel()
	if err != nil {
		unlock()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := restore(); err != nil {
			t.Error(err)
		}
		// The freezer's holding cgroups, once their crashers are gone
		// (rmdir refuses a cgroup that still has members).
		for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/freezer"} {
			os.Remove(filepath.Join(root, "corecatch.hold"))
		}
		unlock()
	})
}

// SaveKernel saves core_pattern and core_pipe_limit and returns the
// function that writes them back and checks they read back byte for byte.
func SaveKernel() (func() error, error) {
	saved := map[string][]byte{}
	for _, p := range kernelFiles {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("save %s: %w", p, err)
		}
		saved[p] = data
	}
	return func() error {
		var errs []error
		for _, p := range kernelFiles {
			if err := os.WriteFile(p, saved[p], 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restore %s: %w", p, err))
			}
			if now, _ := os.ReadFile(p); !bytes.Equal(now, saved[p]) {
				errs = append(errs, fmt.Errorf("%s is %q after restore, was %q", p, now, saved[p]))
			}
		}
		return errors.Join(errs...)
	}, nil
}

// LockKernel takes the lock that serialises everything changing global
// kernel state (tests, make bench) and returns its release.
func LockKernel() (func(), error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", lockPath, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	return func() { f.Close() }, nil
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds the corecatch binary once per test binary and returns its
// path: a short one (core_pattern has 127 bytes), the same for every test
// binary of this checkout, replaced atomically so that a kernel-run helper
// of another test keeps the file it started.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		sum := sha256.Sum256([]byte(RepoRoot()))
		dir := filepath.Join(os.TempDir(), "ccbin-"+hex.EncodeToString(sum[:4]))
		if buildErr = os.MkdirAll(dir, 0o755); buildErr != nil {
			return
		}
		binPath = filepath.Join(dir, "corecatch")
		tmp := fmt.Sprintf("%s.%d", binPath, os.Getpid())
		cmd := exec.Command("go", "build", "-o", tmp, "./cmd/corecatch")
		cmd.Dir = RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		buildErr = os.Rename(tmp, binPath)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// RepoRoot returns the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// CC compiles C sources from test/crashers into dir with the given extra
// flags (-g is always on) and returns the executable's path.
func CC(t testing.TB, dir, out string, srcs []string, flags ...string) string {
	t.Helper()
	exe := filepath.Join(dir, out)
	args := []string{"-g", "-O0", "-fno-omit-frame-pointer", "-o", exe}
	for _, s := range srcs {
		if !filepath.IsAbs(s) {
			s = filepath.Join(RepoRoot(), "test", "crashers", s)
		}
		args = append(args, s)
	}
	args = append(args, flags...)
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return exe
}
