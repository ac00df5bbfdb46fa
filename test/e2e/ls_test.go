package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/minio/minio-go/v7"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/test/harness"
)

// sre runs corecatch as an SRE does, on a store given by flags and no
// config file, and returns its stdout, stderr and error.
func sre(t *testing.T, storeArgs []string, args ...string) (string, string, error) {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "empty.yaml")
	writeFileT(t, cfg, nil)
	cmd := exec.Command(harness.Binary(t), append(append([]string{"--config", cfg}, storeArgs...), args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// s3Args are the flags of an s3:// store under prefix on srv, with its
// credentials in the environment.
func s3Args(t *testing.T, srv *harness.S3Server, prefix string) []string {
	t.Setenv("AWS_ACCESS_KEY_ID", "corecatch-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "corecatch-test-secret")
	return []string{"--store", "s3://" + srv.Bucket + "/" + prefix, "--s3-endpoint", srv.Endpoint(), "--s3-region", "us-east-1", "--s3-path-style"}
}

// putBundle writes a bundle of metadata m only (no core) into st.
func putBundle(t *testing.T, st store.Store, m *bundle.Metadata) {
	t.Helper()
	w, err := st.Put(context.Background(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// TestLsSkipsUnreadableBundle: one bundle whose metadata.json cannot be
// read (here an id shorter than any bundle's, as a hostile writer to a
// shared bucket plants it) is skipped with a warning on stderr that names
// it, in quotes; ls exits 0 with the others, and fails only when no bundle
// at all can be read. In a local store and in S3 (a real versitygw).
func TestLsSkipsUnreadableBundle(t *testing.T) {
	srv := harness.S3(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		args  []string
		plant func(id string, data []byte)
	}{
		{"file", []string{"--store", "file://" + dir}, func(id string, data []byte) {
			st := store.NewFile(dir)
			putBundle(t, st, &bundle.Metadata{Schema: bundle.Schema, ID: id})
			p, _ := st.BundleDir(id)
			writeFileT(t, filepath.Join(p, bundle.MetadataFile), data)
		}},
		{"s3", s3Args(t, srv, "p"), func(id string, data []byte) {
			if _, err := srv.Client.PutObject(context.Background(), srv.Bucket, "p/"+id+"/"+bundle.MetadataFile,
				bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now().UTC().Truncate(time.Second)
			bad := bundle.NewID(now, []byte("bad"))
			tc.plant(bad, []byte(`{"schema":1,"id":"\u001b[2Jx"}`))
			out, errOut, err := sre(t, tc.args, "ls")
			if err == nil || !strings.Contains(errOut, bad) {
				t.Errorf("ls with only an unreadable bundle: %v; stderr %q; want a failure naming %s", err, errOut, bad)
			}
			st, err := store.Open(tc.args[1], store.Options{S3: store.S3Options{Endpoint: srv.Endpoint(), Region: "us-east-1", PathStyle: true}})
			if err != nil {
				t.Fatal(err)
			}
			good := bundle.NewID(now.Add(-time.Minute), []byte("good"))
			putBundle(t, st, &bundle.Metadata{Schema: bundle.Schema, ID: good, Time: now, Comm: "good", SignalName: "SIGSEGV"})
			out, errOut, err = sre(t, tc.args, "ls")
			if err != nil || !strings.Contains(out, good) || strings.Contains(out, bad) {
				t.Errorf("ls: %v\nstdout:\n%s\nstderr:\n%s\nwant %s listed, exit 0", err, out, errOut, good)
			}
			if !strings.Contains(errOut, "warning") || !strings.Contains(errOut, bad) || !strings.Contains(errOut, `\x1b[2Jx`) || strings.Contains(errOut, "\x1b") {
				t.Errorf("ls's stderr %q: want a warning naming %s with the forged id quoted", errOut, bad)
			}
		})
	}
}

func writeFileT(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rawControl returns the first byte of out a terminal would act on or
// mis-render (a control character other than a line break, invalid
// UTF-8, a bidi override), or -1. (metadata.json turns invalid UTF-8 into
// U+FFFD, a printable glyph.)
func rawControl(out string) int {
	for i, r := range out {
		if (r < 0x20 && r != '\n') || r == 0x7f || (r == utf8.RuneError && !strings.HasPrefix(out[i:], "\ufffd")) || r == '\u202e' || (r >= 0x80 && r < 0xa0) {
			return i
		}
	}
	return -1
}

// TestShowEscapesNames: a bundle whose every name holds terminal escapes,
// control characters, invalid UTF-8 and a bidi override (all chosen by
// the crashed container, or by whoever wrote its metadata) is printed by
// ls, show and bugs with those bytes escaped.
func TestShowEscapesNames(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--store", "file://" + dir}
	evil := "x\x1b]0;owned\a\x1b[2J\r\xff\u202e\u0085"
	id := bundle.NewID(time.Now(), []byte("evil"))
	putBundle(t, store.NewFile(dir), &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: time.Now(), Node: evil, Comm: evil,
		Exe: evil, Cmdline: []string{evil, evil}, SignalName: evil, Cgroup: evil, Title: evil, Signature: evil,
		Pod: &bundle.Pod{Name: evil, Namespace: evil, UID: evil}, Container: &bundle.Container{ID: evil, Name: evil, Image: evil, Runtime: evil},
		Workload: &bundle.Workload{Kind: evil, Name: evil}, IdentitySource: evil, IdentityReason: evil,
		Freeze: &bundle.Freeze{Reason: evil}, Core: bundle.Core{Truncated: true, TruncateReason: evil, Compression: evil},
		Files: []bundle.File{{Path: evil, Role: evil, BuildID: evil, Skipped: evil}}, Warnings: []string{evil},
		Dedup: &bundle.Dedup{Of: evil, Key: evil}})
	for _, cmd := range [][]string{{"ls"}, {"show", id}, {"bugs"}} {
		out, errOut, err := sre(t, args, cmd...)
		if err != nil {
			t.Errorf("%v: %v\n%s", cmd, err, errOut)
		}
		if i := rawControl(out); i >= 0 || !strings.Contains(out, `\x1b]0;owned\a`) {
			t.Errorf("%v prints a raw %q at byte %d (or no escaped name):\n%q", cmd, out[max(i, 0):min(max(i, 0)+8, len(out))], i, out)
		}
	}
}

// lsIDs runs ls with args on n and returns the ids it lists, in order.
func lsIDs(t *testing.T, n *harness.Node, args ...string) []string {
	t.Helper()
	var ids []string
	for _, line := range strings.Split(n.Run(append([]string{"ls"}, args...)...), "\n")[1:] {
		for _, f := range strings.Fields(line) {
			if bundle.ValidID(f) == nil {
				ids = append(ids, f)
				break
			}
		}
	}
	return ids
}

// bugJSON is a bug as `bugs --json` prints it.
type bugJSON struct {
	Signature, Title, Core string
	Count                  int
	FirstSeen              time.Time `json:"first_seen"`
	LastSeen               time.Time `json:"last_seen"`
	Nodes, Workloads       []string
}

// bugsOf runs `bugs --json` with args on n.
func bugsOf(t *testing.T, n *harness.Node, args ...string) []bugJSON {
	t.Helper()
	var out []bugJSON
	if err := json.Unmarshal([]byte(n.Run(append([]string{"bugs", "--json"}, args...)...)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLsFiltersAndBugsOnRealCrashes: four bugs of two programs crash 8
// times into an S3 store through the agent (so the store's index is
// written by the real upload and gdb's update): ls from the index lists
// what a full scan lists, with titles; each filter keeps exactly the
// crashes it names; bugs groups them into the four bugs with their counts,
// first and last seen, node and the bundle that kept the core; show of a
// deduplicated crash points at that bundle.
func TestLsFiltersAndBugsOnRealCrashes(t *testing.T) {
	n, _, socket := s3Node(t, "")
	a := startAgent(t, n, socket)
	a.waitLine(t, "deduplication is cluster-wide")
	harness.OneDedupWindow(t, 2*time.Minute)
	twobugs := harness.CC(t, n.Dir, "twobugs", []string{"twobugs.c"})
	signals := buildSignals(t, n.Dir)
	var crashes []*bundle.Metadata
	for _, c := range [][]string{{twobugs, "header"}, {signals, "segv"}, {twobugs, "record"}, {twobugs, "header"},
		{signals, "abrt"}, {twobugs, "record"}, {signals, "segv"}, {twobugs, "header"}} {
		cmd := exec.Command(c[0], c[1])
		n.Crash(cmd)
		crashes = append(crashes, n.WaitAnalyzed(cmd.Process.Pid))
	}
	// Newest first, as ls lists.
	slices.SortFunc(crashes, func(x, y *bundle.Metadata) int { return strings.Compare(y.ID, x.ID) })
	pick := func(keep func(m *bundle.Metadata) bool) []string {
		var ids []string
		for _, m := range crashes {
			if keep(m) {
				ids = append(ids, m.ID)
			}
		}
		return ids
	}
	all := pick(func(*bundle.Metadata) bool { return true })
	header := crashes[slices.IndexFunc(crashes, func(m *bundle.Metadata) bool { return strings.Contains(m.Title, "parse_header") })]
	mid := crashes[3].Time
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, all},
		{[]string{"--scan"}, all},
		{[]string{"--exe", "twobugs"}, pick(func(m *bundle.Metadata) bool { return m.Comm == "twobugs" })},
		{[]string{"--exe", signals}, pick(func(m *bundle.Metadata) bool { return m.Comm == "signals" })},
		{[]string{"--signal", "SIGABRT"}, pick(func(m *bundle.Metadata) bool { return m.SignalName == "SIGABRT" })},
		{[]string{"--signal", "segv"}, pick(func(m *bundle.Metadata) bool { return m.SignalName == "SIGSEGV" })},
		{[]string{"--signature", header.Signature}, pick(func(m *bundle.Metadata) bool { return m.Signature == header.Signature })},
		{[]string{"--signature", header.Signature[:6], "--scan"}, pick(func(m *bundle.Metadata) bool { return m.Signature == header.Signature })},
		{[]string{"--with-core"}, pick(func(m *bundle.Metadata) bool { return m.Core.StoredBytes > 0 })},
		{[]string{"--node", header.Node}, all},
		{[]string{"--node", "elsewhere"}, nil},
		{[]string{"--namespace", "prod"}, nil},
		{[]string{"--workload", "api"}, nil},
		{[]string{"--pod", "api-0"}, nil},
		{[]string{"--since", mid.Format(time.RFC3339Nano)}, pick(func(m *bundle.Metadata) bool { return !m.Time.Before(mid) })},
		{[]string{"--until", mid.Format(time.RFC3339Nano)}, pick(func(m *bundle.Metadata) bool { return m.Time.Before(mid) })},
		{[]string{"--since", "1h", "--until=-1h"}, all},
		{[]string{"--until", "1h"}, nil},
		{[]string{"-n", "3"}, all[:3]},
		{[]string{"--exe", "twobugs", "--with-core", "-n", "1"}, pick(func(m *bundle.Metadata) bool { return m.Comm == "twobugs" && m.Core.StoredBytes > 0 })[:1]},
	} {
		if got := lsIDs(t, n, tc.args...); !slices.Equal(got, tc.want) {
			t.Errorf("ls %v: %q, want %q", tc.args, got, tc.want)
		}
	}
	if out := n.Run("ls"); !strings.Contains(out, "TITLE") || !strings.Contains(out, header.Title) {
		t.Errorf("ls shows no titles:\n%s", out)
	}
	if cores := pick(func(m *bundle.Metadata) bool { return m.Core.StoredBytes > 0 }); len(cores) != 4 {
		t.Errorf("%d bundles kept a core, want one per bug: %q", len(cores), cores)
	}

	bugs := bugsOf(t, n)
	if len(bugs) != 4 {
		t.Fatalf("bugs: %+v, want 4", bugs)
	}
	for _, b := range bugs {
		var of []*bundle.Metadata
		for _, m := range crashes {
			if m.Signature == b.Signature {
				of = append(of, m)
			}
		}
		core := of[slices.IndexFunc(of, func(m *bundle.Metadata) bool { return m.Core.StoredBytes > 0 })]
		if b.Count != len(of) || b.Title != of[0].Title || !b.LastSeen.Equal(of[0].Time) || !b.FirstSeen.Equal(of[len(of)-1].Time) ||
			b.Core != core.ID || !slices.Equal(b.Nodes, []string{header.Node}) {
			t.Errorf("bug %+v; want %d crashes titled %q, seen %v..%v, core %s, node %s", b, len(of), of[0].Title, of[len(of)-1].Time, of[0].Time, core.ID, header.Node)
		}
	}
	if want := map[string]int{"SIGSEGV in parse_header (twobugs)": 3, "SIGSEGV in write_record (twobugs)": 2}; len(bugsOf(t, n, "--exe", "twobugs")) != len(want) {
		t.Errorf("bugs --exe twobugs: want the two bugs %v", want)
	}
	if out := n.Run("bugs"); !strings.Contains(out, header.Title) || !strings.Contains(out, "COUNT") {
		t.Errorf("bugs:\n%s", out)
	}
	dup := crashes[slices.IndexFunc(crashes, func(m *bundle.Metadata) bool { return m.Dedup != nil && m.Dedup.Of != "" })]
	if out := n.Run("show", dup.ID); !strings.Contains(out, "core is in bundle "+dup.Dedup.Of) || !strings.Contains(out, "corecatch debug "+dup.Dedup.Of) {
		t.Errorf("show of the duplicate %s does not point at %s:\n%s", dup.ID, dup.Dedup.Of, out)
	}
}
