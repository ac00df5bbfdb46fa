package analysis

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/store"
)

// Complete replaces a published bundle's frame-pointer walk with gdb's
// unwind of its stored core, bounded by cfg, and rewrites its metadata
// (analysis.pending cleared either way). work is a scratch directory for
// the decompressed core, and keeps gdb's debuginfod downloads. It returns
// the amended metadata.
func Complete(ctx context.Context, cfg config.Analysis, st store.Store, m *bundle.Metadata, work string) (*bundle.Metadata, error) {
	u, ok := st.(store.Updater)
	if !ok {
		return m, errors.New("the store cannot amend metadata")
	}
	var unwound Unwound
	var clues Clues
	var err error
	switch {
	case cfg.GDB == "":
		err = errors.New("the full unwind is off (analysis.gdb)")
	case m.Core.Truncated:
		err = errors.New("the core is truncated")
	case cfg.MaxCoreBytes.Bytes > 0 && m.Core.RawBytes > cfg.MaxCoreBytes.Bytes:
		err = fmt.Errorf("the core is larger than analysis.max_core_bytes (%s)", cfg.MaxCoreBytes)
	default:
		var attempts int
		if attempts, err = countAttempt(ctx, u, m.ID); err != nil {
			return m, err
		}
		if attempts > maxAttempts {
			err = fmt.Errorf("the full unwind was started %d times and never finished (the agent died in it): given up", maxAttempts)
			break
		}
		dir := filepath.Join(work, m.ID)
		defer os.RemoveAll(dir)
		if _, err = store.Pull(ctx, st, m.ID, dir); err == nil {
			g := GDB{Path: cfg.GDB, Timeout: time.Duration(cfg.Timeout), Memory: cfg.MaxMemory.Bytes, MaxThreads: cfg.MaxThreads,
				DebuginfodURLs: cfg.DebuginfodURLs, DebuginfodCache: filepath.Join(work, "debuginfod"), DebuginfodMaxBytes: cfg.MaxCoreBytes.Bytes,
				UID: cfg.RunAsUser, GID: cfg.RunAsGroup}
			if g.DebuginfodURLs == "" {
				g.DebuginfodURLs = os.Getenv("DEBUGINFOD_URLS")
			}
			status, _ := os.ReadFile(filepath.Join(dir, bundle.ProcDir, "status"))
			unwound, err = g.Unwind(ctx, dir, m, statusThreads(status))
			clues = BundleClues(dir, m)
		}
	}
	var out *bundle.Metadata
	uerr := u.Update(ctx, m.ID, func(stored *bundle.Metadata) error {
		var a bundle.Analysis
		if stored.Analysis != nil {
			a = *stored.Analysis
		}
		a.Pending = false
		if err != nil {
			a.Reason = err.Error()
		} else {
			stored.Title = Describe(stored.SignalName, unwound.Frames, clues)
			stored.Backtrace = unwound.Frames
			a = bundle.Analysis{Unwinder: "gdb", Threads: unwound.Threads, Script: unwound.Script, Warnings: unwound.Warnings, Attempts: a.Attempts}
			if len(a.Script) == 0 {
				a.Script = Script(clues)
			}
		}
		stored.Analysis = &a
		out = stored
		return nil
	})
	if uerr != nil {
		return m, uerr
	}
	return out, err
}

// maxAttempts is how many times the full unwind of one bundle is started
// before it is given up: each start is recorded first, so an analysis that
// kills the agent (the node's OOM killer, a bug) cannot crash-loop it
// through the pending bundles it resumes at every start.
const maxAttempts = 3

// countAttempt records one more start of a bundle's full unwind and
// returns how many there were.
func countAttempt(ctx context.Context, u store.Updater, id string) (int, error) {
	var n int
	err := u.Update(ctx, id, func(stored *bundle.Metadata) error {
		if stored.Analysis == nil {
			stored.Analysis = &bundle.Analysis{}
		}
		stored.Analysis.Attempts++
		n = stored.Analysis.Attempts
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("record the analysis attempt: %w", err)
	}
	return n, nil
}

// statusThreads reads the Threads: line of /proc/PID/status.
func statusThreads(status []byte) int {
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}
