package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

func newLs(g *globals) *cobra.Command {
	var asJSON bool
	var limit int
	var ff filterFlags
	cmd := &cobra.Command{
		Use:   "ls [filters]",
		Short: "List bundles, newest first",
		Long: `ls lists bundles, newest first, with the title of each crash. Filters
narrow it: --since 1h, --until 2026-12-01, --namespace, --workload, --pod,
--node, --exe, --signal, --signature, --with-core; -n keeps the newest N.
An S3 store answers from its index (see docs/s3.md); --scan reads every
bundle's metadata instead. --json prints the bundles' whole metadata.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, list, err := ff.summaries(cmd, g)
			if err != nil {
				return err
			}
			if limit > 0 && len(list) > limit {
				list = list[:limit]
			}
			if asJSON {
				metas, err := store.Metadata(cmd.Context(), st, list)
				if err := warnSkipped(cmd, len(metas), err); err != nil {
					return err
				}
				if metas == nil {
					metas = []*bundle.Metadata{}
				}
				return printJSON(cmd.OutOrStdout(), metas)
			}
			var tab table
			tab.add("TIME", "NODE", "NAMESPACE", "POD", "CONTAINER", "EXE", "SIGNAL", "SIZE", "ID", "TITLE")
			for i := range list {
				m := &list[i]
				size := bundle.HumanBytes(m.StoredBytes)
				if m.Truncated {
					size += " (truncated: " + m.TruncateReason + ")"
				}
				tab.add(m.Time.Local().Format("2006-01-02 15:04:05"), cell(m.Node), cell(m.Namespace), cell(m.Pod), cell(m.Container),
					cell(m.Exe), cell(m.SignalName), printable(size), m.ID, cell(m.Title))
			}
			return tab.write(cmd.OutOrStdout())
		},
	}
	ff.add(cmd)
	cmd.Flags().IntVarP(&limit, "limit", "n", 0, "list only the newest N bundles that pass the filters (0: all)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of the bundles' metadata objects")
	return cmd
}

// warnSkipped prints a warning on stderr for each bundle a listing
// skipped, and fails only when nothing at all could be read.
func warnSkipped(cmd *cobra.Command, listed int, err error) error {
	var skipped store.Skipped
	if !errors.As(err, &skipped) {
		return err
	}
	for _, e := range skipped {
		fmt.Fprintf(cmd.ErrOrStderr(), "corecatch: warning: skipped: %s\n", printableLines(e.Error()))
	}
	if listed == 0 {
		return fmt.Errorf("none of the %d bundles could be read: see the warnings above", len(skipped))
	}
	return nil
}

// cell renders a field for a table: escaped, "-" when empty.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return printable(s)
}

func newShow(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Print one bundle's metadata",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, st, err := g.openStore(cmd)
			if err != nil {
				return err
			}
			m, err := st.Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				data, err := bundle.Encode(m)
				if err != nil {
					return err
				}
				_, err = out.Write(data)
				return err
			}
			printShow(out, m)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print metadata.json")
	return cmd
}

func printShow(w io.Writer, m *bundle.Metadata) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	// Every value may hold bytes the crashed container chose.
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, printable(v)) }
	row("id", m.ID)
	row("time", m.Time.Format("2006-01-02T15:04:05Z07:00"))
	row("node", m.Node)
	row("exe", store.SummaryOf(m).Exe)
	row("comm", m.Comm)
	row("cmdline", strings.Join(m.Cmdline, " "))
	row("pid", fmt.Sprintf("%d (in its namespace: %d), thread %d", m.PID, m.NSPID, m.TID))
	row("uid/gid", fmt.Sprintf("%d/%d", m.UID, m.GID))
	row("signal", fmt.Sprintf("%s (%d)", m.SignalName, m.Signal))
	row("cgroup", m.Cgroup)
	if m.Pod != nil {
		row("pod", fmt.Sprintf("%s/%s (uid %s)", m.Pod.Namespace, m.Pod.Name, m.Pod.UID))
	}
	if m.Container != nil {
		row("container", fmt.Sprintf("%s %s (%s, %s)", m.Container.Name, m.Container.Image, m.Container.Runtime, m.Container.ID))
	}
	if m.Workload != nil {
		row("workload", m.Workload.Kind+"/"+m.Workload.Name)
	}
	if m.IdentitySource != "" {
		row("identity", strings.TrimSpace(m.IdentitySource+" "+m.IdentityReason))
	}
	if e := m.EBPF; e != nil {
		ev := fmt.Sprintf("si_code %d, fault address %s", e.SiCode, e.FaultAddr)
		if e.SiCode <= 0 {
			ev = fmt.Sprintf("si_code %d, sent by pid %d", e.SiCode, e.SenderPID)
		}
		row("ebpf", fmt.Sprintf("%s; helper started %.1f ms after the signal", ev, e.LatencyMS))
	}
	if f := m.Freeze; f != nil {
		if f.Frozen {
			row("freeze", fmt.Sprintf("froze %s %.1f ms after the signal, for %.0f ms", f.Cgroup, f.LatencyMS, f.DurationMS))
		} else {
			row("freeze", "not frozen: "+f.Reason)
		}
	}
	c := m.Core
	core := fmt.Sprintf("%s raw, %s stored (%s)", bundle.HumanBytes(c.RawBytes), bundle.HumanBytes(c.StoredBytes), c.Compression)
	if c.Truncated {
		core += fmt.Sprintf(", TRUNCATED (%s): kept %d of %d bytes", c.TruncateReason, c.KeptBytes, max(c.ExpectedBytes, c.RawBytes))
	}
	row("core", core)
	fmt.Fprintf(tw, "files:\t%d\n", len(m.Files))
	tw.Flush()
	for _, f := range m.Files {
		note := f.BuildID
		if f.Skipped != "" {
			note = "not captured: " + f.Skipped
		}
		fmt.Fprintf(w, "  %-6s %s %s %s\n", printable(f.Role), printable(f.Path), bundle.HumanBytes(f.Size), printable(note))
	}
	for _, warning := range m.Warnings {
		fmt.Fprintf(w, "warning: %s\n", printable(warning))
	}
	debug := m.ID
	if d := m.Dedup; d != nil && d.Of != "" && bundle.ValidID(d.Of) == nil {
		// A duplicate's core was drained: the bug's core is in the
		// first bundle.
		fmt.Fprintf(w, "\nthis crash's core was not kept: its bug's core is in bundle %s\n", d.Of)
		debug = d.Of
	}
	fmt.Fprintf(w, "\ndebug it: corecatch debug %s\n", debug)
}
