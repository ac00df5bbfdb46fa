// Package sysctl installs corecatch as the kernel's core dump handler and
// puts back exactly what was there before. The previous values are saved on
// disk, so that an uninstall after a reboot of the agent, or by another
// binary, still restores them byte for byte.
package sysctl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Proc is where the kernel's files are on a host; an agent in a pod reaches
// the host's through a mount elsewhere (config host.proc_sys_kernel).
const Proc = "/proc/sys/kernel"

const (
	patternFile   = "core_pattern"
	pipeLimitFile = "core_pipe_limit"
	// MaxPattern is the longest core_pattern the kernel keeps; it cuts
	// longer ones silently (CORENAME_MAX_SIZE - 1).
	MaxPattern = 127
	// PipeLimit is what install raises core_pipe_limit to when it is 0.
	// Only with a limit above 0 does the kernel keep the crashed process
	// (its /proc/PID/exe and map_files) until the helper is done; past it
	// the kernel skips dumps, so it is set as systemd-coredump does.
	PipeLimit = 16
)

// Saved is what install replaced, as the exact bytes the kernel's files
// read back (base64 in JSON), in the state file (spool.SysctlState): what
// uninstall, or a stopping agent, will write back.
type Saved struct {
	CorePattern   []byte `json:"core_pattern"`
	CorePipeLimit []byte `json:"core_pipe_limit"`
}

// Result says what install or uninstall did, for the user.
type Result struct {
	Pattern         string
	PreviousPattern string
	PipeLimit       string
	PreviousLimit   string
	// AlreadyInstalled is true when the pattern was already corecatch's.
	AlreadyInstalled bool
}

func read(proc, name string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(proc, name))
	if err != nil {
		return nil, fmt.Errorf("read kernel.%s: %w", name, err)
	}
	return data, nil
}

// readBoth reads core_pattern and core_pipe_limit as the kernel shows them.
func readBoth(proc string) (pattern, limit []byte, err error) {
	if pattern, err = read(proc, patternFile); err != nil {
		return nil, nil, err
	}
	limit, err = read(proc, pipeLimitFile)
	return pattern, limit, err
}

func write(proc, name string, data []byte) error {
	if err := os.WriteFile(filepath.Join(proc, name), data, 0o644); err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("write kernel.%s: %w (run as root)", name, err)
		}
		return fmt.Errorf("write kernel.%s: %w", name, err)
	}
	return nil
}

// Pattern builds the core_pattern that runs binary as the helper. It fails
// when the result would not fit the kernel's 127 bytes.
func Pattern(binary, configPath, args string) (string, error) {
	if !filepath.IsAbs(binary) || strings.ContainsAny(binary, " \t\n") {
		return "", fmt.Errorf("helper path %q must be absolute and without spaces (the kernel splits the pattern on spaces)", binary)
	}
	if strings.ContainsAny(configPath, " \t\n") {
		return "", fmt.Errorf("config path %q must not contain spaces", configPath)
	}
	p := fmt.Sprintf("|%s collect -c %s %s", binary, configPath, args)
	if len(p) > MaxPattern {
		return "", fmt.Errorf("core_pattern %q is %d bytes, more than the kernel's %d: install the binary or the spool under a shorter path", p, len(p), MaxPattern)
	}
	return p, nil
}

// IsOurs reports whether a core_pattern runs a corecatch helper (this
// binary or another copy), so that install never saves its own pattern as
// the one to restore.
func IsOurs(pattern []byte) bool {
	f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(string(pattern)), "|"))
	return strings.HasPrefix(string(pattern), "|") && len(f) >= 2 && strings.HasPrefix(filepath.Base(f[0]), "corecatch") && f[1] == "collect"
}

// InstalledConfig returns the config file the installed core_pattern (in
// the kernel's directory proc) hands its corecatch helper ("-c PATH"), or
// "" when the pattern is not corecatch's: that file names the spool where
// install saved what it replaced.
func InstalledConfig(proc string) (string, error) {
	p, err := read(proc, patternFile)
	if err != nil || !IsOurs(p) {
		return "", err
	}
	f := strings.Fields(string(p))
	for i := 2; i+1 < len(f); i++ {
		if f[i] == "-c" || f[i] == "--config" {
			return f[i+1], nil
		}
	}
	return "", nil
}

// Install sets core_pattern, in the kernel's directory proc, to pattern,
// raises core_pipe_limit when it is 0, and saves the previous values in
// the file state, whose directory exists, unless corecatch was already
// installed (then the saved values from that install stay: an agent that
// was killed without restoring finds them, and its successor restores
// them). ours are the other patterns of this install (the coredump
// socket's), which are corecatch's too.
func Install(proc, state, pattern string, ours ...string) (Result, error) {
	oldPattern, oldLimit, err := readBoth(proc)
	if err != nil {
		return Result{}, err
	}
	res := Result{
		Pattern: pattern, PreviousPattern: strings.TrimSuffix(string(oldPattern), "\n"),
		PreviousLimit: strings.TrimSpace(string(oldLimit)),
	}
	res.PipeLimit = res.PreviousLimit
	_, statErr := os.Stat(state)
	res.AlreadyInstalled = IsOurs(oldPattern) || slices.Contains(append(ours, pattern), strings.TrimSuffix(string(oldPattern), "\n"))
	if !res.AlreadyInstalled || errors.Is(statErr, fs.ErrNotExist) {
		if res.AlreadyInstalled {
			// Ours but nothing saved (spool wiped): the best restore
			// target is the kernel's default.
			oldPattern = []byte("core\n")
		}
		data, _ := json.Marshal(Saved{CorePattern: oldPattern, CorePipeLimit: oldLimit})
		if err := WriteAtomic(state, 0o600, bytes.NewReader(data)); err != nil {
			return res, fmt.Errorf("save previous sysctls: %w", err)
		}
	}
	if n, err := strconv.Atoi(res.PreviousLimit); err == nil && n == 0 {
		if err := write(proc, pipeLimitFile, []byte(strconv.Itoa(PipeLimit))); err != nil {
			return res, err
		}
		res.PipeLimit = strconv.Itoa(PipeLimit)
	}
	if err := write(proc, patternFile, []byte(pattern)); err != nil {
		return res, err
	}
	got, err := read(proc, patternFile)
	if err != nil {
		return res, err
	}
	if strings.TrimSuffix(string(got), "\n") != pattern {
		return res, fmt.Errorf("kernel.core_pattern reads back %q, not %q: is another agent (systemd-coredump, apport) rewriting it?", got, pattern)
	}
	return res, nil
}

// SocketSupported reports whether the kernel in proc can send cores to a
// socket (kernel.core_modes lists "socket", Linux 6.16+). Only a pattern
// that reads back as written proves it takes the request protocol (@@):
// since 6.16.8 the kernel accepts an invalid pattern on write and refuses
// it on read, which Install checks.
func SocketSupported(proc string) bool {
	modes, err := read(proc, "core_modes")
	return err == nil && slices.Contains(strings.Fields(string(modes)), "socket")
}

// Uninstall restores the values install saved in the file state into the
// kernel's directory proc, byte for byte, and forgets them. Without saved
// values it changes nothing and says so.
func Uninstall(proc, state string) (Result, error) {
	data, err := os.ReadFile(state)
	if errors.Is(err, fs.ErrNotExist) {
		return Result{}, fmt.Errorf("nothing to restore: %s does not exist (corecatch was not installed with this spool; pass the --spool that install used)", state)
	}
	if err != nil {
		return Result{}, fmt.Errorf("read saved sysctls: %w", err)
	}
	var s Saved
	if err := json.Unmarshal(data, &s); err != nil {
		return Result{}, fmt.Errorf("read saved sysctls %s: %w", state, err)
	}
	cur, curLimit, err := readBoth(proc)
	if err != nil {
		return Result{}, err
	}
	res := Result{
		Pattern: strings.TrimSuffix(string(s.CorePattern), "\n"), PreviousPattern: strings.TrimSuffix(string(cur), "\n"),
		PipeLimit: strings.TrimSpace(string(s.CorePipeLimit)), PreviousLimit: strings.TrimSpace(string(curLimit)),
	}
	// Writing the pattern back as read (with its newline) restores it
	// exactly: the kernel strips one trailing newline on write.
	if err := write(proc, patternFile, s.CorePattern); err != nil {
		return res, err
	}
	if err := write(proc, pipeLimitFile, s.CorePipeLimit); err != nil {
		return res, err
	}
	return res, os.Remove(state)
}

// HelperName is the helper's file name in a host directory (IsOurs knows a
// pattern by it).
const HelperName = "corecatch"

// CopyHelper installs the binary src as dir/corecatch for the kernel to
// run, and returns that path. It never opens the old file for writing (a
// running helper makes that fail with "text file busy"): it writes a
// temporary file beside it, syncs it and renames it over the old one, so
// the kernel starts either the old binary or the new one, never a part.
func CopyHelper(src, dir string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("open this binary to install it: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create the helper's directory %s: %w (check host.bin_dir and its mount)", dir, err)
	}
	dst := filepath.Join(dir, HelperName)
	if err := WriteAtomic(dst, 0o755, in); err != nil {
		return "", fmt.Errorf("install the helper as %s: %w (check host.bin_dir and its mount)", dst, err)
	}
	return dst, syncDir(dir)
}

// RemoveHelper removes what CopyHelper installed in dir. A helper the
// kernel already started keeps running from the unlinked file.
func RemoveHelper(dir string) error {
	if err := os.Remove(filepath.Join(dir, HelperName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the installed helper: %w", err)
	}
	return nil
}

// WriteAtomic writes what r holds to path with mode through a temporary
// file beside it, synced before it is renamed over path. The temporary name
// is fixed, so that a write cut by a kill leaves nothing the next one does
// not replace.
func WriteAtomic(path string, mode os.FileMode, r io.Reader) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil { // O_CREATE's mode went through the umask
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
