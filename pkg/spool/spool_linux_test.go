package spool

import (
	"bytes"
	"crypto/sha256"
	"encoding/gob"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// TestLayout pins every path to the name earlier versions used: an
// upgraded agent must find what an older helper or agent left.
func TestLayout(t *testing.T) {
	s := Open("/var/lib/corecatch/spool")
	for _, p := range [][2]string{
		{s.HelperConfig(), "/var/lib/corecatch/spool/collect.yaml"},
		{s.SysctlState(), "/var/lib/corecatch/spool/sysctl-saved.json"},
		{s.Outbox(), "/var/lib/corecatch/spool/outbox"},
		{s.Identity(), "/var/lib/corecatch/spool/identity"},
		{s.FeishuQueue("sre"), "/var/lib/corecatch/spool/notify/feishu-sre"},
		{s.AlertmanagerQueue(), "/var/lib/corecatch/spool/notify/alertmanager"},
		{s.Frozen(), "/var/lib/corecatch/spool/frozen"},
		{s.Analysis(), "/var/lib/corecatch/spool/analysis"},
		{s.Reports().dir, "/var/lib/corecatch/spool/reports"},
		{s.Missing().file(42), "/var/lib/corecatch/spool/missing/42.gob"},
		{s.Missing().journalPath(), "/var/lib/corecatch/spool/missing/journal"},
		{s.ClusterMarker().path, "/var/lib/corecatch/spool/dedup/cluster"},
		{s.rateFile(), "/var/lib/corecatch/spool/rate"},
		{filepath.Join(s.slotDir(), "0"), "/var/lib/corecatch/spool/slots/0"},
		{s.dedupDir(), "/var/lib/corecatch/spool/dedup"},
		{s.String(), "/var/lib/corecatch/spool"},
	} {
		if got, want := p[0], p[1]; got != want {
			t.Errorf("%s, want %s", got, want)
		}
	}
}

// TestOpenTouchesNothing: opening a spool and asking for its paths
// creates nothing, so an SRE's command never leaves a spool behind.
func TestOpenTouchesNothing(t *testing.T) {
	root := filepath.Join(t.TempDir(), "spool")
	s := Open(root)
	s.Outbox()
	s.Reports()
	s.Missing().PIDs()
	if s.ClusterMarker().IsSet() {
		t.Error("a marker in a spool that does not exist")
	}
	if list, err := s.Reports().List(); len(list) != 0 || err != nil {
		t.Errorf("reports of a spool that does not exist: %v, %v", list, err)
	}
	if _, err := os.Stat(root); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the spool was created: %v", err)
	}
}

// modes checks that everything under root is root's alone.
func modes(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		info, _ := d.Info()
		want := fs.FileMode(fileMode)
		if d.IsDir() {
			want = fs.ModeDir | dirMode
		}
		if info.Mode() != want {
			t.Errorf("%s is %v, want %v", p, info.Mode(), want)
		}
		return nil
	})
}

// TestHelperConfig: the snapshot creates the spool, replaces an older one
// whole, and leaves no temporary file.
func TestHelperConfig(t *testing.T) {
	root := filepath.Join(t.TempDir(), "spool")
	s := Open(root)
	for _, data := range []string{"spool: /x\n", "spool: /y\n"} {
		if err := s.WriteHelperConfig([]byte(data)); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(s.HelperConfig()); string(got) != data {
			t.Errorf("snapshot %q, want %q", got, data)
		}
	}
	if entries, _ := os.ReadDir(root); len(entries) != 1 {
		t.Errorf("the spool holds %v, want the snapshot alone", entries)
	}
	modes(t, root)
}

// TestReports: a report the helper leaves is read whole by the agent,
// oldest first, with those an older helper wrote; a temporary file is not
// a report, and one that cannot be read is named but keeps the others.
func TestReports(t *testing.T) {
	root := filepath.Join(t.TempDir(), "spool")
	r := Open(root).Reports()
	day := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	newer := &bundle.Metadata{Schema: bundle.Schema, ID: bundle.NewID(day.Add(time.Hour), []byte("crasher")), Time: day.Add(time.Hour), Exe: "/bin/crasher"}
	if err := r.Put(newer); err != nil {
		t.Fatal(err)
	}
	// As the agentapi of earlier versions wrote them.
	older := &bundle.Metadata{Schema: bundle.Schema, ID: bundle.NewID(day, []byte("crasher")), Time: day}
	data, err := bundle.Encode(older)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(r.dir, older.ID+".json"), data, 0o600)
	os.WriteFile(filepath.Join(r.dir, "."+older.ID+".tmp"), data[:10], 0o600)
	list, err := r.List()
	if err != nil || len(list) != 2 || list[0].ID != older.ID || list[1].ID != newer.ID || list[1].Exe != newer.Exe {
		t.Fatalf("List = %v, %v; want %s then %s", list, err, older.ID, newer.ID)
	}
	os.Remove(filepath.Join(r.dir, "."+older.ID+".tmp"))
	modes(t, root)

	os.WriteFile(filepath.Join(r.dir, "20261201-130000-bad-000000.json"), []byte("{"), 0o600)
	list, err = r.List()
	if len(list) != 2 || err == nil || !strings.Contains(err.Error(), "20261201-130000-bad-000000.json") {
		t.Errorf("List with a broken report = %d reports, %v; want 2 and the broken one named", len(list), err)
	}
	for _, id := range []string{older.ID, newer.ID} {
		if err := r.Forget(id); err != nil {
			t.Error(err)
		}
	}
	if err := r.Forget("../collect"); err == nil {
		t.Error("Forget took a path for an id")
	}
	if err := r.Put(&bundle.Metadata{ID: "../x"}); err == nil {
		t.Error("Put took a path for an id")
	}
	if list, _ := r.List(); len(list) != 0 {
		t.Errorf("forgotten reports are listed: %v", list)
	}
}

// record is shaped like the agent's pending crash.
type record struct {
	Event   struct{ TGID, Signal int }
	Exited  time.Time
	Outcome string
}

// TestMissing: a pending crash survives in the journal as the gob of the
// agent's record, an earlier agent's file (the same gob) is still read,
// files that are not records are not taken for ones, a torn last entry is
// ignored, and a journal with nothing live starts over once large.
func TestMissing(t *testing.T) {
	root := filepath.Join(t.TempDir(), "spool")
	m := Open(root).Missing()
	rec := record{Exited: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC), Outcome: "core_dumped"}
	rec.Event.TGID, rec.Event.Signal = 42, 11
	if err := m.Put(42, rec); err != nil {
		t.Fatal(err)
	}
	var old bytes.Buffer
	gob.NewEncoder(&old).Encode(rec)
	os.WriteFile(filepath.Join(m.dir, "7.gob"), old.Bytes(), 0o600)
	os.WriteFile(filepath.Join(m.dir, ".42.gob.tmp"), nil, 0o600)
	os.WriteFile(filepath.Join(m.dir, "x.gob"), nil, 0o600)
	// Another agent's view: what this one wrote, and the old file.
	next := Open(root).Missing()
	pids := next.PIDs()
	slices.Sort(pids)
	if !slices.Equal(pids, []int{7, 42}) {
		t.Errorf("PIDs = %v, want [7 42]", pids)
	}
	for _, pid := range []int{7, 42} {
		var got record
		if err := next.Get(pid, &got); err != nil || got != rec {
			t.Errorf("Get(%d) = %+v, %v; want %+v", pid, got, err, rec)
		}
	}
	os.WriteFile(m.file(8), []byte("not gob"), 0o600)
	var got record
	if err := next.Get(8, &got); err == nil {
		t.Error("Get decoded garbage")
	}
	os.Remove(filepath.Join(m.dir, ".42.gob.tmp"))
	os.Remove(filepath.Join(m.dir, "x.gob"))
	modes(t, root)

	// A worker killed mid-append leaves a torn entry: it is ignored.
	f, _ := os.OpenFile(m.journalPath(), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte{200, 0, 0, 0, opPut, 9})
	f.Close()
	if pids := Open(root).Missing().PIDs(); len(pids) != 3 {
		t.Errorf("PIDs with a torn entry = %v, want [7 8 42]", pids)
	}
	for _, pid := range []int{7, 8, 42} {
		next.Remove(pid)
	}
	if pids := Open(root).Missing().PIDs(); len(pids) != 0 {
		t.Errorf("PIDs after Remove = %v", pids)
	}

	m = Open(root).Missing()
	big := record{Outcome: strings.Repeat("x", compactAt)}
	for pid := range 3 {
		m.Put(pid, big)
	}
	for pid := range 3 {
		m.Remove(pid)
	}
	if st, err := os.Stat(m.journalPath()); err != nil || st.Size() != 0 {
		t.Errorf("a large journal with nothing live was not started over: %v, %v", st.Size(), err)
	}
	m.Put(5, rec)
	if pids := Open(root).Missing().PIDs(); !slices.Equal(pids, []int{5}) {
		t.Errorf("PIDs after the journal started over = %v, want [5]", pids)
	}

	// One record pending for ever (a crash loop that is never dumped):
	// the journal is rewritten with it alone.
	for pid := 100; pid < 100+rewriteAt/compactAt+2; pid++ {
		m.Put(pid, big)
		m.Remove(pid)
	}
	if st, err := os.Stat(m.journalPath()); err != nil || st.Size() > rewriteAt {
		t.Errorf("the journal grew to %d bytes with one live record (%v)", st.Size(), err)
	}
	var five record
	if err := Open(root).Missing().Get(5, &five); err != nil || five != rec {
		t.Errorf("after the rewrite Get(5) = %+v, %v", five, err)
	}
	m.Put(6, rec)
	if pids := Open(root).Missing().PIDs(); len(pids) != 2 {
		t.Errorf("PIDs after the rewrite = %v, want [5 6]", pids)
	}
	modes(t, root)
}

// TestStormLocks: a bug's record is the file older helpers locked, a slot
// is taken by one holder at a time, and a holder's close frees it.
func TestStormLocks(t *testing.T) {
	root := filepath.Join(t.TempDir(), "spool")
	s := Open(root)
	key := "default/Deployment/web SIGSEGV:abc"
	f, err := s.Dedup(key)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte(key))
	if f.Name() != filepath.Join(root, "dedup", hex.EncodeToString(h[:12])) {
		t.Errorf("dedup record %s", f.Name())
	}
	// Held: another open file description cannot lock it.
	other, _ := os.Open(f.Name())
	if err := unix.Flock(int(other.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Errorf("the dedup record is not locked: %v", err)
	}
	other.Close()
	f.Close()

	a, err := s.Slot(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Slot(0); err == nil {
		t.Error("slot 0 taken twice")
	}
	b, err := s.Slot(1)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if a, err = s.Slot(0); err != nil {
		t.Errorf("slot 0 not free after its holder closed it: %v", err)
	}
	a.Close()
	b.Close()
	r, err := s.Rate()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	modes(t, root)
}

// TestClusterMarker: set, seen, cleared, and clearing it twice is fine.
func TestClusterMarker(t *testing.T) {
	root := filepath.Join(t.TempDir(), "spool")
	m := Open(root).ClusterMarker()
	if err := m.Set("s3://bucket"); err != nil {
		t.Fatal(err)
	}
	if !m.IsSet() {
		t.Error("marker set but not seen")
	}
	if got, _ := os.ReadFile(m.path); string(got) != "s3://bucket\n" {
		t.Errorf("marker holds %q", got)
	}
	modes(t, root)
	for range 2 {
		if err := m.Clear(); err != nil {
			t.Error(err)
		}
	}
	if m.IsSet() {
		t.Error("marker cleared but seen")
	}
}

// TestMissingEntriesStandAlone: every record reads back alone, the later
// ones too, which the journal writes with descriptors its encoder sent
// once.
func TestMissingEntriesStandAlone(t *testing.T) {
	root := filepath.Join(t.TempDir(), "spool")
	m := Open(root).Missing()
	want := map[int]record{}
	for pid := 1; pid <= 3; pid++ {
		var rec record
		rec.Event.TGID, rec.Event.Signal, rec.Outcome = pid, 10+pid, fmt.Sprint("outcome ", pid)
		if err := m.Put(pid, rec); err != nil {
			t.Fatal(err)
		}
		want[pid] = rec
	}
	next := Open(root).Missing()
	for pid, rec := range want {
		var got record
		if err := next.Get(pid, &got); err != nil || got != rec {
			t.Errorf("Get(%d) = %+v, %v; want %+v", pid, got, err, rec)
		}
	}
}
