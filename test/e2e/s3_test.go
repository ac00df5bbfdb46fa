package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/test/harness"
)

var statOptions = minio.StatObjectOptions{}

// s3Prefix is where the tests' nodes keep bundles in the bucket.
const s3Prefix = "clusters/test"

// s3Node starts an S3 service and installs corecatch with a store on it
// (credentials in a file, retries at most 5s apart, more upload settings
// in upload, indented), for an agent on the socket it returns.
func s3Node(t *testing.T, upload string) (*harness.Node, *harness.S3Server, string) {
	t.Helper()
	srv := harness.S3(t)
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccs3-%d.sock", os.Getpid()))
	n := harness.Install(t, srv.Config(s3Prefix)+"socket: "+socket+"\nupload:\n  max_backoff: 5s\n"+upload)
	return n, srv, socket
}

// outboxIDs lists the bundles waiting in the node's outbox.
func outboxIDs(t *testing.T, n *harness.Node) []string {
	t.Helper()
	ids, err := store.NewFile(spool.Open(n.Spool).Outbox()).IDs()
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// checkBucket checks that the bucket holds the bundles ids, each exactly
// once, nothing else, and no multipart upload in progress; and that the
// outbox is empty.
func checkBucket(t *testing.T, n *harness.Node, srv *harness.S3Server, ids ...string) {
	t.Helper()
	var listed []string
	for _, m := range n.Bundles() {
		listed = append(listed, m.ID)
	}
	slices.Sort(listed)
	want := slices.Sorted(slices.Values(ids))
	if !slices.Equal(listed, want) {
		t.Errorf("corecatch ls lists %q, want %q, each once", listed, want)
	}
	metas := 0
	for _, k := range srv.Keys(t, s3Prefix+"/") {
		id, name, _ := strings.Cut(strings.TrimPrefix(k, s3Prefix+"/"), "/")
		if id == ".dedup" || id == ".index" {
			continue // the claims of cluster-wide deduplication, the listing index
		}
		if !slices.Contains(ids, id) {
			t.Errorf("object %s belongs to no bundle of this test", k)
		}
		if name == bundle.MetadataFile {
			metas++
		}
	}
	if metas != len(ids) {
		t.Errorf("%d metadata.json objects for %d bundles", metas, len(ids))
	}
	if up := srv.Incomplete(t, s3Prefix+"/"); len(up) > 0 {
		t.Errorf("incomplete multipart uploads left: %q", up)
	}
	if left := outboxIDs(t, n); len(left) > 0 {
		t.Errorf("bundles left in the outbox after upload: %q", left)
	}
}

// TestS3CrashArrivesAndPulls: with an S3 store (a real versitygw on
// loopback) a real crash's bundle is written to the outbox by the helper,
// uploaded by the agent and deleted locally; `corecatch pull` from the
// bucket gives exactly the bytes the kernel sent, `gdb bt` works on it, and
// ls, show and debug work as with a local store. The agent counts the
// upload and shows an empty backlog.
func TestS3CrashArrivesAndPulls(t *testing.T) {
	n, srv, socket := s3Node(t, "")
	exe := buildSignals(t, n.Dir)
	addr := freeAddr(t)
	a := startAgentListen(t, n, socket, addr)

	raw := teeCore(t, n)
	cmd := exec.Command(exe, "segv", "--hole", "64")
	n.Crash(cmd)
	a.waitLineWithin(t, 60*time.Second, "bundle uploaded")
	m := n.WaitBundle(cmd.Process.Pid)
	checkWholeCore(t, m)
	checkBucket(t, n, srv, m.ID)

	dir, _ := checkDebuggable(t, n, m, "crash_segv")
	if got, want := sha256File(t, filepath.Join(dir, "core")), sha256File(t, raw); got != want {
		t.Errorf("core pulled from the bucket has sha256 %s, the kernel's core %s", got, want)
	}
	if out := n.Run("show", m.ID); !strings.Contains(out, "SIGSEGV") || !strings.Contains(out, m.ID) {
		t.Errorf("corecatch show against s3://:\n%s", out)
	}
	out := n.Run("debug", m.ID, "--cache", filepath.Join(n.Dir, "cache"), "--", "-nx", "-batch", "-iex", "set debuginfod enabled off", "-ex", "bt")
	if !strings.Contains(out, "crash_segv") {
		t.Errorf("corecatch debug against s3:// does not show crash_segv:\n%s", out)
	}
	body := httpGet(t, "http://"+addr+"/metrics")
	for _, want := range []string{
		`corecatch_store_operations_total{op="upload",result="ok"} 1`,
		`corecatch_store_operations_total{op="upload",result="error"} 0`,
		`corecatch_upload_backlog_bytes 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestS3OutageSpoolsAndUploads: the S3 service is down during two crashes
// and for 2 minutes after the first, and the agent is killed (-9) and
// restarted meanwhile. The bundles wait in the outbox; once the service is
// back they are uploaded, each exactly once, and the outbox empties.
func TestS3OutageSpoolsAndUploads(t *testing.T) {
	n, srv, socket := s3Node(t, "")
	exe := buildSignals(t, n.Dir)
	srv.Kill()
	a := startAgent(t, n, socket)

	first := exec.Command(exe, "segv")
	n.Crash(first)
	down := time.Now()
	a.waitLineWithin(t, 30*time.Second, "upload failed", "bundles wait in the outbox")
	if ids := outboxIDs(t, n); len(ids) != 1 {
		t.Fatalf("outbox during the outage: %q, want the crash's bundle", ids)
	}

	// The spool outlives the agent.
	a.cmd.Process.Kill()
	a.cmd.Wait()
	a = startAgent(t, n, socket)
	second := exec.Command(exe, "abrt")
	n.Crash(second)
	a.waitLineWithin(t, 30*time.Second, "upload failed")
	time.Sleep(2*time.Minute - time.Since(down))
	ids := outboxIDs(t, n)
	if len(ids) != 2 {
		t.Fatalf("outbox after 2 minutes of outage: %q, want both bundles", ids)
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	m1, m2 := n.WaitBundle(first.Process.Pid), n.WaitBundle(second.Process.Pid)
	deadline := time.Now().Add(30 * time.Second)
	for len(outboxIDs(t, n)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("both bundles uploaded %.1fs after the service came back", time.Since(up).Seconds())
	if !slices.Contains(ids, m1.ID) || !slices.Contains(ids, m2.ID) {
		t.Errorf("uploaded %s and %s, but the outbox held %q", m1.ID, m2.ID, ids)
	}
	checkBucket(t, n, srv, m1.ID, m2.ID)
}

// TestS3ServerKilledMidUpload kills the S3 service (-9) in the middle of
// the multipart upload of a 1 GB bundle. Once it is back, the upload
// completes, the multipart upload the dead service was left with is
// aborted, and the bundle in the bucket opens in gdb.
func TestS3ServerKilledMidUpload(t *testing.T) {
	n, srv, socket := s3Node(t, "")
	exe := limMem(t, n)
	a := startAgent(t, n, socket)

	cmd := exec.Command(exe, "1024", "rand")
	n.Crash(cmd)
	deadline := time.Now().Add(60 * time.Second)
	for len(srv.Incomplete(t, s3Prefix+"/")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no multipart upload started within 60s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // some parts in, most not
	srv.Kill()
	a.waitLineWithin(t, 60*time.Second, "upload failed")
	ids := outboxIDs(t, n)
	if len(ids) != 1 {
		t.Fatalf("outbox after the service died: %q, want the bundle", ids)
	}
	staged := srv.StagedParts()
	if staged == 0 {
		t.Fatal("the dead service holds no part of the cut upload: it was not killed mid-upload")
	}
	t.Logf("the dead service holds %d parts of the cut upload", staged)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	a.waitLineWithin(t, 2*time.Minute, "bundle uploaded", ids[0])
	t.Logf("1 GB bundle uploaded %.1fs after the service came back", time.Since(start).Seconds())
	m := n.WaitBundle(cmd.Process.Pid)
	checkBucket(t, n, srv, m.ID)
	if left := srv.StagedParts(); left != 0 {
		t.Errorf("the service still holds %d parts of multipart uploads", left)
	}
	info, err := srv.Client.StatObject(context.Background(), srv.Bucket, s3Prefix+"/"+m.ID+"/"+bundle.CoreFile, statOptions)
	if err != nil || info.Size != m.Core.StoredBytes || m.Core.StoredBytes < 1<<30 {
		t.Errorf("core.zst in the bucket: %d bytes (%v); the bundle stored %d", info.Size, err, m.Core.StoredBytes)
	}
	dir, _ := checkDebuggable(t, n, m, "crash_here")
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "core"), &st); err != nil || st.Size != m.Core.RawBytes {
		t.Errorf("pulled core: %d bytes (%v), want %d", st.Size, err, m.Core.RawBytes)
	}
}

// TestS3DirectStreaming: with upload.direct the kernel-run helper, which
// has no environment (credentials come from the file), streams the bundle
// straight into the bucket, with no agent and nothing in the outbox, and
// the bundle opens in gdb.
func TestS3DirectStreaming(t *testing.T) {
	n, srv, _ := s3Node(t, "  direct: true\n")
	cmd := exec.Command(buildSignals(t, n.Dir), "fpe")
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)
	checkWholeCore(t, m)
	checkBucket(t, n, srv, m.ID)
	checkDebuggable(t, n, m, "crash_fpe")
}

// TestS3ClusterDedup: two nodes share a bucket (one after the other on this
// machine, each with its own spool and agent). A bug's first crash on node
// A keeps its core; the same bug on node B keeps metadata and backtrace,
// points at A's bundle and is counted into it; another bug on B keeps a
// core of its own.
func TestS3ClusterDedup(t *testing.T) {
	n, _, socket := s3Node(t, "")
	exe := harness.CC(t, n.Dir, "twobugs", []string{"twobugs.c"})
	addr := freeAddr(t)
	a := startAgentListen(t, n, socket, addr)
	a.waitLine(t, "deduplication is cluster-wide")
	harness.OneDedupWindow(t, 3*time.Minute)
	crash := func(node *harness.Node, bug string) *bundle.Metadata {
		t.Helper()
		cmd := exec.Command(exe, bug)
		node.Crash(cmd)
		return node.WaitAnalyzed(cmd.Process.Pid)
	}
	first := crash(n, "header")
	if first.Core.StoredBytes == 0 || first.Dedup == nil || first.Dedup.Of != "" {
		t.Fatalf("node A's first crash: core %+v, dedup %+v; want its core kept", first.Core, first.Dedup)
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	a.cmd.Wait()

	// Node B: the same store, a spool, socket and name of its own.
	cfg, err := os.ReadFile(n.Config)
	if err != nil {
		t.Fatal(err)
	}
	spoolB, socketB := filepath.Join(n.Dir, "spool-b"), socket+"-b"
	cfgB := filepath.Join(n.Dir, "config-b.yaml")
	text := strings.Replace(strings.Replace(string(cfg), n.Spool, spoolB, 1), socket, socketB, 1) + "node: node-b\n"
	if err := os.WriteFile(cfgB, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(socketB) })
	b := harness.Attach(t, n.Dir, cfgB, n.Store, spoolB)
	addrB := freeAddr(t)
	agentB := startAgentListen(t, b, socketB, addrB)
	agentB.waitLine(t, "deduplication is cluster-wide")

	dup := crash(b, "header")
	if dup.Node != "node-b" || dup.Core.TruncateReason != bundle.ReasonDedup || dup.Dedup == nil || dup.Dedup.Of != first.ID {
		t.Errorf("node B's crash of the same bug: node %s, core %+v, dedup %+v; want a dedup of %s", dup.Node, dup.Core, dup.Dedup, first.ID)
	}
	if dup.Title != first.Title || dup.Signature != first.Signature {
		t.Errorf("same bug, different title/signature: %q %s vs %q %s", dup.Title, dup.Signature, first.Title, first.Signature)
	}
	other := crash(b, "record")
	if other.Core.StoredBytes == 0 || other.Core.Truncated {
		t.Errorf("node B's other bug: core %+v, want it kept", other.Core)
	}
	agentB.waitLineWithin(t, 60*time.Second, "bundle uploaded")
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := getBundle(b, first.ID)
		if err == nil && m.Dedup != nil && m.Dedup.Count == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first bundle does not count node B's crash: %+v (%v)", m, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if body := httpGet(t, "http://"+addrB+"/metrics"); !strings.Contains(body, "corecatch_dedup_cluster_wide 1") {
		t.Error("/metrics lacks corecatch_dedup_cluster_wide 1")
	}
}

// getBundle reads one bundle's metadata from `corecatch ls --json`.
func getBundle(n *harness.Node, id string) (*bundle.Metadata, error) {
	for _, m := range n.Bundles() {
		if m.ID == id {
			return m, nil
		}
	}
	return nil, fmt.Errorf("bundle %s not listed", id)
}

// TestS3HostileOutbox: the outbox holds, oldest first, a bundle whose
// metadata is damaged and a real crash that mapped a file by a path so long
// that its key, as it was, would pass S3's 1024 bytes; a normal crash comes
// after. Neither blocks the others: the long path is uploaded under a
// bounded key and pulled back to its real path, the damaged bundle is set
// aside (the agent's gauge says so), and the later crash arrives too.
func TestS3HostileOutbox(t *testing.T) {
	n, srv, socket := s3Node(t, "  quarantine_after: 2\n")
	outbox := spool.Open(n.Spool).Outbox()
	damaged := bundle.NewID(time.Now().Add(-time.Hour), []byte("damaged"))
	rel, _ := bundle.Dir(damaged)
	if err := os.MkdirAll(filepath.Join(outbox, rel), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outbox, rel, bundle.MetadataFile), []byte(`{"schema": 1, "id": `), 0o600); err != nil {
		t.Fatal(err)
	}
	long := n.Dir
	for i := range 5 {
		long = filepath.Join(long, strings.Repeat(string(rune('a'+i)), 200))
	}
	if err := os.MkdirAll(long, 0o755); err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(long, "data.bin")
	if err := os.WriteFile(lib, []byte(strings.Repeat("corecatch long path\n", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	mapper := harness.CC(t, n.Dir, "mapper", []string{"mapper.c"})
	first := exec.Command(mapper, "map", lib)
	n.Crash(first)
	second := exec.Command(buildSignals(t, n.Dir), "segv")
	n.Crash(second)

	addr := freeAddr(t)
	a := startAgentListen(t, n, socket, addr)
	a.waitLineWithin(t, 60*time.Second, "bundle set aside", damaged)
	m1, m2 := n.WaitBundle(first.Process.Pid), n.WaitBundle(second.Process.Pid)
	deadline := time.Now().Add(30 * time.Second)
	for len(outboxIDs(t, n)) > 1 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if left := outboxIDs(t, n); !slices.Equal(left, []string{damaged}) {
		t.Errorf("outbox holds %q; want only the damaged bundle %s", left, damaged)
	}
	var longKeys int
	for _, k := range srv.Keys(t, s3Prefix+"/") {
		if len(k) > 1024 {
			t.Errorf("key of %d bytes: %.80s...", len(k), k)
		}
		if strings.HasPrefix(k, s3Prefix+"/"+m1.ID+"/long/") {
			longKeys++
		}
	}
	if longKeys != 1 {
		t.Errorf("%d keys of %s under long/; want the long-named file's", longKeys, m1.ID)
	}
	f := fileWhere(m1, func(f *bundle.File) bool { return f.Path == lib })
	if f == nil || f.Stored == "" {
		t.Fatalf("the long-named file is not in %s's metadata as captured: %+v", m1.ID, f)
	}
	pulled := n.Pull(m1.ID)
	if got, want := sha256File(t, filepath.Join(pulled, bundle.SysrootDir, lib)), sha256File(t, lib); got != want {
		t.Errorf("pulled %s has sha256 %s, want %s", lib, got, want)
	}
	if m2.Core.StoredBytes == 0 {
		t.Errorf("the later crash's bundle has no core: %+v", m2.Core)
	}
	body := httpGet(t, "http://"+addr+"/metrics")
	for _, want := range []string{"corecatch_upload_quarantined_bundles 1", "corecatch_bundles_quarantined_total 1"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
