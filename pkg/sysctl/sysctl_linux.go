// Package sysctl installs corecatch as the kernel's core dump handler and
// puts back exactly what was there before. The previous values are saved on
// disk, so that an uninstall after a reboot of the agent, or by another
// binary, still restores them byte for byte.
package sysctl

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The kernel's files. Proc is a variable so that tests of the save/restore
// logic can point it at a directory; privileged tests use the real one.
var Proc = "/proc/sys/kernel"

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
	// stateFile, in the spool, holds the values install replaced.
	stateFile = "sysctl-saved.json"
)

// Saved is what install replaced, as the exact bytes the kernel's files
// read back (base64 in JSON).
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

func read(name string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(Proc, name))
	if err != nil {
		return nil, fmt.Errorf("read kernel.%s: %w", name, err)
	}
	return data, nil
}

// readBoth reads core_pattern and core_pipe_limit as the kernel shows them.
func readBoth() (pattern, limit []byte, err error) {
	if pattern, err = read(patternFile); err != nil {
		return nil, nil, err
	}
	limit, err = read(pipeLimitFile)
	return pattern, limit, err
}

func write(name string, data []byte) error {
	if err := os.WriteFile(filepath.Join(Proc, name), data, 0o644); err != nil {
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

// Install sets core_pattern to pattern, raises core_pipe_limit when it is 0,
// and saves the previous values in spool unless corecatch was already
// installed (then the saved values from that install stay).
func Install(spool, pattern string) (Result, error) {
	oldPattern, oldLimit, err := readBoth()
	if err != nil {
		return Result{}, err
	}
	res := Result{
		Pattern: pattern, PreviousPattern: strings.TrimSuffix(string(oldPattern), "\n"),
		PreviousLimit: strings.TrimSpace(string(oldLimit)),
	}
	res.PipeLimit = res.PreviousLimit
	state := filepath.Join(spool, stateFile)
	_, statErr := os.Stat(state)
	res.AlreadyInstalled = IsOurs(oldPattern)
	if !res.AlreadyInstalled || errors.Is(statErr, fs.ErrNotExist) {
		if res.AlreadyInstalled {
			// Ours but nothing saved (spool wiped): the best restore
			// target is the kernel's default.
			oldPattern = []byte("core\n")
		}
		data, _ := json.Marshal(Saved{CorePattern: oldPattern, CorePipeLimit: oldLimit})
		if err := os.MkdirAll(spool, 0o755); err != nil {
			return res, fmt.Errorf("create spool %s: %w", spool, err)
		}
		if err := writeAtomic(state, data); err != nil {
			return res, fmt.Errorf("save previous sysctls: %w", err)
		}
	}
	if n, err := strconv.Atoi(res.PreviousLimit); err == nil && n == 0 {
		if err := write(pipeLimitFile, []byte(strconv.Itoa(PipeLimit))); err != nil {
			return res, err
		}
		res.PipeLimit = strconv.Itoa(PipeLimit)
	}
	if err := write(patternFile, []byte(pattern)); err != nil {
		return res, err
	}
	got, err := read(patternFile)
	if err != nil {
		return res, err
	}
	if strings.TrimSuffix(string(got), "\n") != pattern {
		return res, fmt.Errorf("kernel.core_pattern reads back %q, not %q: is another agent (systemd-coredump, apport) rewriting it?", got, pattern)
	}
	return res, nil
}

// Uninstall restores the values install saved in spool, byte for byte, and
// forgets them. Without saved values it changes nothing and says so.
func Uninstall(spool string) (Result, error) {
	state := filepath.Join(spool, stateFile)
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
	cur, curLimit, err := readBoth()
	if err != nil {
		return Result{}, err
	}
	res := Result{
		Pattern: strings.TrimSuffix(string(s.CorePattern), "\n"), PreviousPattern: strings.TrimSuffix(string(cur), "\n"),
		PipeLimit: strings.TrimSpace(string(s.CorePipeLimit)), PreviousLimit: strings.TrimSpace(string(curLimit)),
	}
	// Writing the pattern back as read (with its newline) restores it
	// exactly: the kernel strips one trailing newline on write.
	if err := write(patternFile, s.CorePattern); err != nil {
		return res, err
	}
	if err := write(pipeLimitFile, s.CorePipeLimit); err != nil {
		return res, err
	}
	return res, os.Remove(state)
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
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
