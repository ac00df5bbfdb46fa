package cli

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/corecatch/corecatch/pkg/store"
)

// bug is the crashes of one signature, as crash trackers group them.
type bug struct {
	Signature string    `json:"signature"`
	Title     string    `json:"title"`
	Count     int       `json:"count"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Nodes     []string  `json:"nodes"`
	// Workloads are namespace/name (or namespace/pod without a known
	// workload).
	Workloads []string `json:"workloads"`
	// Core is the newest of the bug's bundles that kept a core: the one
	// to debug. Empty when none did.
	Core string `json:"core,omitempty"`
	core store.Summary
}

// groupBugs groups summaries (newest first) by signature, most recently
// seen bug first. Crashes without a signature (no backtrace) are grouped
// by executable and signal.
func groupBugs(list []store.Summary) []*bug {
	byKey := map[string]*bug{}
	var bugs []*bug
	nodes, workloads := map[string]map[string]bool{}, map[string]map[string]bool{}
	for i := range list {
		s := &list[i]
		key := s.Signature
		if key == "" {
			key = "\x00" + s.Exe + "\x00" + s.SignalName
		}
		b := byKey[key]
		if b == nil {
			b = &bug{Signature: s.Signature, Title: s.Title, FirstSeen: s.Time, LastSeen: s.Time}
			if b.Title == "" {
				b.Title = strings.TrimSpace(s.SignalName + " in " + s.Exe)
			}
			byKey[key] = b
			bugs = append(bugs, b)
			nodes[key], workloads[key] = map[string]bool{}, map[string]bool{}
		}
		b.Count++
		b.FirstSeen, b.LastSeen = minTime(b.FirstSeen, s.Time), maxTime(b.LastSeen, s.Time)
		if s.Node != "" {
			nodes[key][s.Node] = true
		}
		if w := workloadOf(s); w != "" {
			workloads[key][w] = true
		}
		// The newest bundle with a whole core, else the newest with one.
		if s.HasCore() && (b.Core == "" || (b.core.Truncated && !s.Truncated)) {
			b.Core, b.core = s.ID, *s
		}
	}
	for key, b := range byKey {
		b.Nodes = slices.Sorted(maps.Keys(nodes[key]))
		b.Workloads = slices.Sorted(maps.Keys(workloads[key]))
	}
	slices.SortStableFunc(bugs, func(a, b *bug) int { return b.LastSeen.Compare(a.LastSeen) })
	return bugs
}

func workloadOf(s *store.Summary) string {
	switch {
	case s.Workload != "":
		return s.Namespace + "/" + s.Workload
	case s.Pod != "":
		return s.Namespace + "/" + s.Pod
	}
	return ""
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// some renders a set in a table cell: the first two, then how many more.
func some(list []string) string {
	if len(list) == 0 {
		return "-"
	}
	out := make([]string, 0, 3)
	for _, s := range list[:min(2, len(list))] {
		out = append(out, printable(s))
	}
	if len(list) > 2 {
		out = append(out, "+"+strconv.Itoa(len(list)-2))
	}
	return strings.Join(out, ",")
}

func newBugs(g *globals) *cobra.Command {
	var asJSON bool
	var ff filterFlags
	cmd := &cobra.Command{
		Use:   "bugs [filters]",
		Short: "Group crashes into bugs by signature, most recently seen first",
		Long: `bugs groups the crashes that pass the filters (the same as ls takes) by
their signature: each bug with its title, how many crashes, when first and
last seen, on which nodes and in which workloads, and the newest bundle
that kept its core (debug that one).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, list, err := ff.summaries(cmd, g)
			if err != nil {
				return err
			}
			bugs := groupBugs(list)
			if asJSON {
				if bugs == nil {
					bugs = []*bug{}
				}
				return printJSON(cmd.OutOrStdout(), bugs)
			}
			var tab table
			tab.add("LAST SEEN", "FIRST SEEN", "COUNT", "NODES", "WORKLOADS", "SIGNATURE", "CORE", "TITLE")
			const layout = "2006-01-02 15:04:05"
			for _, b := range bugs {
				tab.add(b.LastSeen.Local().Format(layout), b.FirstSeen.Local().Format(layout), strconv.Itoa(b.Count),
					some(b.Nodes), some(b.Workloads), cell(b.Signature), cell(b.Core), cell(b.Title))
			}
			return tab.write(cmd.OutOrStdout())
		},
	}
	ff.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of bugs")
	return cmd
}
