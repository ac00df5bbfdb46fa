package store

import (
	"context"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// Summary is what listings and bug reports need of one bundle: the fields
// `corecatch ls` shows and filters on, small enough that an S3 store's
// index holds one per bundle and answers a listing of a whole cluster
// without reading any bundle's metadata.json.
type Summary struct {
	ID             string    `json:"id"`
	Time           time.Time `json:"time"`
	Node           string    `json:"node,omitempty"`
	Namespace      string    `json:"namespace,omitempty"`
	Pod            string    `json:"pod,omitempty"`
	Container      string    `json:"container,omitempty"`
	WorkloadKind   string    `json:"workload_kind,omitempty"`
	Workload       string    `json:"workload,omitempty"`
	Exe            string    `json:"exe,omitempty"`
	Signal         int       `json:"signal"`
	SignalName     string    `json:"signal_name,omitempty"`
	Signature      string    `json:"signature,omitempty"`
	Title          string    `json:"title,omitempty"`
	StoredBytes    int64     `json:"stored_bytes"`
	Truncated      bool      `json:"truncated,omitempty"`
	TruncateReason string    `json:"truncate_reason,omitempty"`
	// DedupOf is the bundle holding the core of this crash's bug, when
	// this one's was drained as a duplicate.
	DedupOf string `json:"dedup_of,omitempty"`
}

// HasCore reports whether the bundle kept a core (possibly truncated).
func (s *Summary) HasCore() bool { return s.StoredBytes > 0 }

// SummaryOf is a bundle's summary.
func SummaryOf(m *bundle.Metadata) Summary {
	s := Summary{ID: m.ID, Time: m.Time, Node: m.Node, Exe: m.Exe, Signal: m.Signal, SignalName: m.SignalName,
		Signature: m.Signature, Title: m.Title, StoredBytes: m.Core.StoredBytes, Truncated: m.Core.Truncated,
		TruncateReason: m.Core.TruncateReason}
	if s.Exe == "" {
		s.Exe = m.Comm
	}
	if m.Pod != nil {
		s.Namespace, s.Pod = m.Pod.Namespace, m.Pod.Name
	}
	if m.Container != nil {
		s.Container = m.Container.Name
	}
	if m.Workload != nil {
		s.WorkloadKind, s.Workload = m.Workload.Kind, m.Workload.Name
	}
	if m.Dedup != nil {
		s.DedupOf = m.Dedup.Of
	}
	return s
}

// Filter selects bundles, as `corecatch ls` and `corecatch bugs` take it.
// Zero fields select everything.
type Filter struct {
	// Since and Until bound the crash time (Until exclusive).
	Since, Until time.Time
	Namespace    string
	// Workload is a workload's name, or kind/name (Deployment/api).
	Workload string
	Pod      string
	Node     string
	// Exe is the executable's path or its base name (or the comm).
	Exe string
	// Signal is a name (SIGSEGV, segv) or a number.
	Signal string
	// Signature is a bug's signature or a prefix of it.
	Signature string
	// WithCore keeps only bundles that kept a core.
	WithCore bool
}

// Match reports whether s passes the filter.
func (f *Filter) Match(s *Summary) bool {
	switch {
	case !f.Since.IsZero() && s.Time.Before(f.Since),
		!f.Until.IsZero() && !s.Time.Before(f.Until),
		f.Namespace != "" && s.Namespace != f.Namespace,
		f.Pod != "" && s.Pod != f.Pod,
		f.Node != "" && s.Node != f.Node,
		f.WithCore && !s.HasCore(),
		f.Signature != "" && !strings.HasPrefix(s.Signature, f.Signature):
		return false
	}
	if f.Workload != "" {
		kind, name, ok := strings.Cut(f.Workload, "/")
		if !ok {
			kind, name = "", f.Workload
		}
		if s.Workload != name || (kind != "" && !strings.EqualFold(s.WorkloadKind, kind)) {
			return false
		}
	}
	if f.Exe != "" && s.Exe != f.Exe && path.Base(s.Exe) != f.Exe {
		return false
	}
	if f.Signal != "" {
		if n, err := strconv.Atoi(f.Signal); err == nil {
			return s.Signal == n
		}
		want := strings.ToUpper(f.Signal)
		if !strings.HasPrefix(want, "SIG") {
			want = "SIG" + want
		}
		return s.SignalName == want
	}
	return true
}

// Indexed is a store that answers summaries from an index rather than by
// reading every bundle (S3).
type Indexed interface {
	Summaries(ctx context.Context, f Filter) ([]Summary, error)
}

// Summaries returns the summaries of st's bundles that pass f, newest
// first: from the store's index when it has one and scan is false, else
// from every bundle's metadata (a full scan). Bundles that could not be
// read are reported in a Skipped error beside the rest.
func Summaries(ctx context.Context, st Store, f Filter, scan bool) ([]Summary, error) {
	if ix, ok := st.(Indexed); ok && !scan {
		return ix.Summaries(ctx, f)
	}
	return scanSummaries(ctx, st, f)
}

// scanSummaries reads every bundle's metadata for the summaries that
// pass f.
func scanSummaries(ctx context.Context, st Store, f Filter) ([]Summary, error) {
	list, err := st.List(ctx)
	var out []Summary
	for _, m := range list {
		if s := SummaryOf(m); f.Match(&s) {
			out = append(out, s)
		}
	}
	return out, err
}

// Metadata reads the whole metadata of each summarized bundle (for
// `ls --json`), in order, workers at a time; like List, it leaves out
// bundles gone meanwhile and reports unreadable ones in a Skipped error.
func Metadata(ctx context.Context, st Store, list []Summary) ([]*bundle.Metadata, error) {
	ids := make([]string, len(list))
	for i, s := range list {
		ids[i] = s.ID
	}
	return collect(ctx, ids, listWorkers, st.Get)
}
