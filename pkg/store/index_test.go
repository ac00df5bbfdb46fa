package store

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// TestEntryCodec: every byte a container may put in a name survives an
// entry's encoding, which holds no separator and no slash; a malformed or
// forged entry is refused, not trusted.
func TestEntryCodec(t *testing.T) {
	var all strings.Builder
	for c := range 256 {
		all.WriteByte(byte(c))
	}
	evil := all.String() + "~/%zz"
	e := entry{Summary: Summary{ID: bundle.NewID(day0, []byte("x")), Time: day0.Add(123 * time.Millisecond), Node: evil, Namespace: evil,
		Pod: evil, Container: evil, WorkloadKind: evil, Workload: evil, Exe: evil, Signal: 11, SignalName: evil, Signature: evil,
		Title: evil, StoredBytes: 1 << 40, Truncated: true, TruncateReason: evil, DedupOf: evil}, Version: 42}
	line := e.encode()
	if strings.ContainsAny(line, "/\n") || strings.Count(line, "~") != entryFields-1 {
		t.Errorf("encoded entry %q has a slash, a newline or a stray separator", line)
	}
	got, err := decodeEntry(line)
	if err != nil || got.Summary != e.Summary || got.Version != 42 {
		t.Errorf("round trip: %+v, %v\nwant %+v", got, err, e)
	}
	for _, bad := range []string{"", "x", "short~1~", "../../etc~1~", e.ID + "~zz!~", e.ID + "~1~~%G0", e.ID + "~1~~%4"} {
		if _, err := decodeEntry(bad); err == nil {
			t.Errorf("decodeEntry(%q) accepted it", bad)
		}
	}
}

// TestFilterMatch checks each filter on summaries.
func TestFilterMatch(t *testing.T) {
	s := Summary{ID: bundle.NewID(day0, []byte("api")), Time: day0, Node: "node-1", Namespace: "prod", Pod: "api-7d9f-x2",
		WorkloadKind: "Deployment", Workload: "api", Exe: "/usr/bin/api", Signal: 11, SignalName: "SIGSEGV",
		Signature: "0123456789abcdef", StoredBytes: 10}
	for _, tc := range []struct {
		f    Filter
		want bool
	}{
		{Filter{}, true},
		{Filter{Since: day0}, true}, {Filter{Since: day0.Add(time.Second)}, false},
		{Filter{Until: day0.Add(time.Second)}, true}, {Filter{Until: day0}, false},
		{Filter{Namespace: "prod"}, true}, {Filter{Namespace: "dev"}, false},
		{Filter{Workload: "api"}, true}, {Filter{Workload: "deployment/api"}, true}, {Filter{Workload: "StatefulSet/api"}, false}, {Filter{Workload: "web"}, false},
		{Filter{Pod: "api-7d9f-x2"}, true}, {Filter{Pod: "api"}, false},
		{Filter{Node: "node-1"}, true}, {Filter{Node: "node-2"}, false},
		{Filter{Exe: "api"}, true}, {Filter{Exe: "/usr/bin/api"}, true}, {Filter{Exe: "bin/api"}, false},
		{Filter{Signal: "SIGSEGV"}, true}, {Filter{Signal: "segv"}, true}, {Filter{Signal: "11"}, true}, {Filter{Signal: "SIGABRT"}, false}, {Filter{Signal: "6"}, false},
		{Filter{Signature: "0123"}, true}, {Filter{Signature: "0123456789abcdef"}, true}, {Filter{Signature: "1"}, false},
		{Filter{WithCore: true}, true},
	} {
		if got := tc.f.Match(&s); got != tc.want {
			t.Errorf("%+v.Match = %v, want %v", tc.f, got, tc.want)
		}
	}
	if f := (Filter{WithCore: true}); f.Match(&Summary{ID: s.ID}) {
		t.Error("--with-core matched a bundle without a core")
	}
}

// uploadMeta publishes metadata m (files: none) in s3 through Upload, as
// the agent does.
func uploadMeta(t *testing.T, s3 *S3, m *bundle.Metadata) {
	t.Helper()
	local := newStore(t)
	w, err := local.Put(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, m); err != nil {
		t.Fatal(err)
	}
	dir, _ := local.BundleDir(m.ID)
	if err := s3.Upload(ctx, dir, m.ID); err != nil {
		t.Fatal(err)
	}
}

// bundleKeys lists the keys under prefix but the index's.
func bundleKeys(t *testing.T, srv *harness.S3Server, prefix string) []string {
	t.Helper()
	return slices.DeleteFunc(srv.Keys(t, prefix), func(k string) bool { return strings.HasPrefix(k, prefix+indexDir) })
}

func summaryIDs(list []Summary) []string {
	var out []string
	for _, s := range list {
		out = append(out, s.ID)
	}
	return out
}

// checkSame checks that the index answers as a full scan does.
func checkSame(t *testing.T, s3 *S3, f Filter, want ...string) {
	t.Helper()
	idx, err := Summaries(ctx, s3, f, false)
	if err != nil {
		t.Errorf("index: %v", err)
	}
	scan, err := Summaries(ctx, s3, f, true)
	if err != nil {
		t.Errorf("scan: %v", err)
	}
	if !slices.Equal(summaryIDs(idx), want) || !slices.Equal(summaryIDs(scan), want) {
		t.Errorf("filter %+v: index %q, scan %q, want %q", f, summaryIDs(idx), summaryIDs(scan), want)
	}
	for i := range min(len(idx), len(scan)) {
		if a, b := idx[i], scan[i]; a.ID != b.ID || a.Title != b.Title || a.Node != b.Node || !a.Time.Equal(b.Time) {
			t.Errorf("index row %+v, scan row %+v", a, b)
		}
	}
}

// TestS3Index: bundles uploaded are answered from the index as a full
// scan answers, before and after compaction; a title gdb adds later, a
// deletion and a bundle whose writer died before its entry all show; a
// second compaction (another agent's) writes nothing; an entry that
// arrives after its hour was compacted is still found; a forged segment
// is skipped with a warning and its hour read from its entries.
func TestS3Index(t *testing.T) {
	s3, srv := newS3(t, "p")
	now := time.Now().UTC().Truncate(time.Second)
	mk := func(ago time.Duration, comm, ns, sig string) *bundle.Metadata {
		when := now.Add(-ago)
		return &bundle.Metadata{Schema: bundle.Schema, ID: bundle.NewID(when, []byte(comm)), Time: when, Comm: comm, Node: "node-" + comm,
			SignalName: "SIGSEGV", Signal: 11, Signature: sig, Title: "SIGSEGV in " + comm, Pod: &bundle.Pod{Namespace: ns, Name: comm + "-0"},
			Workload: &bundle.Workload{Kind: "StatefulSet", Name: comm}, Core: bundle.Core{StoredBytes: int64(len(comm))}}
	}
	a, b, c := mk(5*time.Hour, "a", "prod", "aaaa"), mk(3*time.Hour, "b", "dev", "bbbb"), mk(time.Minute, "c", "prod", "aaaa")
	for _, m := range []*bundle.Metadata{a, b, c} {
		uploadMeta(t, s3, m)
	}
	checkSame(t, s3, Filter{}, c.ID, b.ID, a.ID)
	checkSame(t, s3, Filter{Namespace: "prod"}, c.ID, a.ID)
	checkSame(t, s3, Filter{Since: now.Add(-4 * time.Hour), Workload: "StatefulSet/b"}, b.ID)
	checkSame(t, s3, Filter{Signature: "aaaa", Pod: "a-0"}, a.ID)

	// gdb's backtrace renames b; a is deleted.
	if err := s3.Update(ctx, b.ID, func(m *bundle.Metadata) error { m.Title = "SIGSEGV in parse (b)"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s3.Delete(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	checkSame(t, s3, Filter{}, c.ID, b.ID)
	if idx, _ := s3.Summaries(ctx, Filter{}); len(idx) != 2 || idx[1].Title != "SIGSEGV in parse (b)" {
		t.Errorf("after Update: %+v", idx)
	}

	// A writer died between metadata.json and its entry.
	d := mk(30*time.Minute, "d", "prod", "dddd")
	data, _ := bundle.Encode(d)
	if _, err := srv.Client.PutObject(ctx, srv.Bucket, s3.key(d.ID, bundle.MetadataFile), bytes.NewReader(data), int64(len(data)), putOpts); err != nil {
		t.Fatal(err)
	}
	checkSame(t, s3, Filter{}, c.ID, d.ID, b.ID)

	// Entries written hours ago (as a backfill would) are compacted; a
	// second agent's compaction writes nothing.
	e := mk(10*time.Hour, "e", "prod", "eeee")
	uploadMeta(t, s3, e)
	if err := s3.Index(ctx, e, e.Time); err != nil {
		t.Fatal(err)
	}
	n, err := s3.CompactIndex(ctx, now)
	if err != nil || n != 1 {
		t.Errorf("CompactIndex: %d segments, %v; want the one settled hour", n, err)
	}
	if n, err := s3.CompactIndex(ctx, now); err != nil || n != 0 {
		t.Errorf("second CompactIndex: %d, %v; want nothing to do", n, err)
	}
	keys := srv.Keys(t, "p/"+segmentDir)
	if len(keys) != 1 {
		t.Fatalf("segments %q, want one", keys)
	}
	// Two agents that both found the hour uncompacted: the second loses.
	before, _ := srv.Client.StatObject(ctx, srv.Bucket, keys[0], statOpts)
	enc, _ := zstd.NewWriter(nil)
	if won, err := s3.compactHour(ctx, hourOf(e.Time), enc); won || err != nil {
		t.Errorf("a second compaction of the hour: won %v, %v", won, err)
	}
	if after, _ := srv.Client.StatObject(ctx, srv.Bucket, keys[0], statOpts); after.ETag != before.ETag {
		t.Error("the second compaction replaced the segment")
	}
	checkSame(t, s3, Filter{}, c.ID, d.ID, b.ID, e.ID)

	// A late entry into the compacted hour moves to the current hour.
	if err := s3.Update(ctx, e.ID, func(m *bundle.Metadata) error { m.Title = "late"; return nil }); err != nil {
		t.Fatal(err)
	}
	late := entry{Summary: SummaryOf(e), Version: time.Now().UnixNano()}
	late.Title = "late"
	if err := s3.putEntry(ctx, late, e.Time); err != nil {
		t.Fatal(err)
	}
	if idx, _ := s3.Summaries(ctx, Filter{Exe: "e"}); len(idx) != 1 || idx[0].Title != "late" {
		t.Errorf("a late entry is lost: %+v", idx)
	}

	// A forged segment: skipped with a warning, its hour read from entries.
	seg := srv.Keys(t, "p/"+segmentDir)[0]
	if _, err := srv.Client.PutObject(ctx, srv.Bucket, seg, strings.NewReader("not zstd"), 8, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	idx, err := s3.Summaries(ctx, Filter{})
	if !slices.Equal(summaryIDs(idx), []string{c.ID, d.ID, b.ID, e.ID}) || err == nil || !strings.Contains(err.Error(), seg) {
		t.Errorf("with a forged segment: %q, %v; want every bundle and a warning naming %s", summaryIDs(idx), err, seg)
	}
}

// FuzzDecodeEntry: whatever a writer to the bucket names an object under
// the index, decoding it never panics, and what is accepted has a valid id
// and encodes back to a line that decodes the same.
func FuzzDecodeEntry(f *testing.F) {
	e := entry{Summary: Summary{ID: bundle.NewID(day0, []byte("x")), Title: "SIGSEGV in f (x)", Node: "n"}, Version: 7}
	for _, seed := range []string{e.encode(), "", "~~", e.ID + "~1~+", e.ID + "~1~d", e.ID + "~zz~~%", strings.Repeat("~", 40)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		e, err := decodeEntry(line)
		if err != nil {
			return
		}
		if bundle.ValidID(e.ID) != nil {
			t.Fatalf("accepted id %q", e.ID)
		}
		again, err := decodeEntry(e.encode())
		if err != nil || again.Summary != e.Summary {
			t.Fatalf("re-encoding %q: %+v, %v", line, again, err)
		}
	})
}

// TestS3NoIndexScans: a bucket that older corecatch versions filled has
// no index at all: Summaries reads its bundles rather than answer empty.
func TestS3NoIndexScans(t *testing.T) {
	s3, srv := newS3(t, "old")
	when := time.Now().Add(-72 * time.Hour)
	m := &bundle.Metadata{Schema: bundle.Schema, ID: bundle.NewID(when, []byte("old")), Time: when, Comm: "old"}
	data, _ := bundle.Encode(m)
	if _, err := srv.Client.PutObject(ctx, srv.Bucket, s3.key(m.ID, bundle.MetadataFile), bytes.NewReader(data), int64(len(data)), putOpts); err != nil {
		t.Fatal(err)
	}
	if list, err := s3.Summaries(ctx, Filter{}); err != nil || len(list) != 1 || list[0].ID != m.ID {
		t.Errorf("Summaries of a bucket without an index: %+v, %v; want %s", list, err, m.ID)
	}
}
