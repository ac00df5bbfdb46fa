package cli

import (
	"slices"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

// TestGroupBugs: crashes of two signatures on several nodes and workloads
// (and one without a signature) become three bugs, most recently seen
// first, each with its count, first and last seen, nodes, workloads and
// the newest bundle that kept a whole core.
func TestGroupBugs(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	row := func(min int, sig, node, ns, wl string, stored int64, truncated bool) store.Summary {
		when := t0.Add(time.Duration(min) * time.Minute)
		return store.Summary{ID: bundle.NewID(when, []byte("svc")), Time: when, Signature: sig, Title: "SIGSEGV in " + sig,
			Node: node, Namespace: ns, Workload: wl, Exe: "/usr/bin/svc", SignalName: "SIGSEGV", StoredBytes: stored, Truncated: truncated}
	}
	list := []store.Summary{ // newest first, as Summaries returns them
		row(50, "aaaa", "n2", "prod", "api", 0, true),
		row(40, "bbbb", "n1", "dev", "web", 5, true),
		row(30, "aaaa", "n3", "prod", "api", 7, true),
		row(20, "aaaa", "n1", "dev", "api", 9, false),
		row(15, "", "n1", "", "", 0, false),
		row(10, "aaaa", "n2", "prod", "api", 3, false),
	}
	bugs := groupBugs(list)
	if len(bugs) != 3 {
		t.Fatalf("%d bugs, want 3: %+v", len(bugs), bugs)
	}
	a, b, none := bugs[0], bugs[1], bugs[2]
	if a.Signature != "aaaa" || a.Count != 4 || !a.LastSeen.Equal(list[0].Time) || !a.FirstSeen.Equal(list[5].Time) ||
		!slices.Equal(a.Nodes, []string{"n1", "n2", "n3"}) || !slices.Equal(a.Workloads, []string{"dev/api", "prod/api"}) || a.Core != list[3].ID {
		t.Errorf("bug aaaa: %+v; want 4 crashes, 3 nodes, 2 workloads, core %s (the newest whole one)", a, list[3].ID)
	}
	if b.Signature != "bbbb" || b.Count != 1 || b.Core != list[1].ID {
		t.Errorf("bug bbbb: %+v; want its truncated core when it has no other", b)
	}
	if none.Signature != "" || none.Count != 1 || none.Core != "" {
		t.Errorf("bug without signature: %+v", none)
	}
}
