package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/corecatch/corecatch/pkg/store"
)

// filterFlags are the bundle filters `ls` and `bugs` share, as
// coredumpctl's matches are.
type filterFlags struct {
	since, until string
	f            store.Filter
	scan         bool
}

func (ff *filterFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&ff.since, "since", "", "only crashes at or after this: a duration back from now (90m, 1h, 7d) or a time (2026-12-01, '2026-12-01 15:04', RFC 3339)")
	fl.StringVar(&ff.until, "until", "", "only crashes before this (a duration back from now or a time, as --since)")
	fl.StringVar(&ff.f.Namespace, "namespace", "", "only crashes in this Kubernetes namespace")
	fl.StringVar(&ff.f.Workload, "workload", "", "only crashes of this workload: NAME or KIND/NAME (Deployment/api)")
	fl.StringVar(&ff.f.Pod, "pod", "", "only crashes in this pod")
	fl.StringVar(&ff.f.Node, "node", "", "only crashes on this node")
	fl.StringVar(&ff.f.Exe, "exe", "", "only crashes of this executable: its path or base name")
	fl.StringVar(&ff.f.Signal, "signal", "", "only crashes of this signal: SIGSEGV, segv or 11")
	fl.StringVar(&ff.f.Signature, "signature", "", "only crashes of this bug: its signature or a prefix of it")
	fl.BoolVar(&ff.f.WithCore, "with-core", false, "only bundles that kept a core")
	fl.BoolVar(&ff.scan, "scan", false, "read every bundle's metadata instead of an S3 store's index")
}

// summaries opens the store and returns it and the summaries of its
// bundles that pass the flags' filter, newest first, warning on stderr
// of those it skipped.
func (ff *filterFlags) summaries(cmd *cobra.Command, g *globals) (store.Store, []store.Summary, error) {
	f, err := ff.filter(time.Now())
	if err != nil {
		return nil, nil, err
	}
	_, st, err := g.openStore(cmd)
	if err != nil {
		return nil, nil, err
	}
	list, err := store.Summaries(cmd.Context(), st, f, ff.scan)
	return st, list, warnSkipped(cmd, len(list), err)
}

// printJSON writes v as indented JSON, as every --json does.
func printJSON(w io.Writer, v any) error {
	out := bufio.NewWriter(w)
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	return out.Flush()
}

// filter returns the filter the flags give, times resolved against now.
func (ff *filterFlags) filter(now time.Time) (store.Filter, error) {
	f := ff.f
	var err error
	if ff.since != "" {
		if f.Since, err = parseWhen(ff.since, now); err != nil {
			return f, fmt.Errorf("--since: %w", err)
		}
	}
	if ff.until != "" {
		if f.Until, err = parseWhen(ff.until, now); err != nil {
			return f, fmt.Errorf("--until: %w", err)
		}
	}
	return f, nil
}

// parseWhen reads a time as --since takes it: a duration back from now
// (Go's, or a whole number of days as 7d) or a local time.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil {
			return now.AddDate(0, 0, -n), nil
		}
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (90m, 1h, 7d) nor a time (2026-12-01, '2026-12-01 15:04', 2026-12-01T15:04:05Z)", s)
}
