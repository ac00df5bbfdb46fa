package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/bundle"
)

var ctx = context.Background()

// day0 is the time of the test bundles' ids; each test bundle is a day
// older than the next.
var day0 = time.Date(2024, 2, 27, 10, 0, 0, 0, time.UTC)

func newStore(t *testing.T) *File {
	t.Helper()
	return NewFile(filepath.Join(t.TempDir(), "store"))
}

// write puts one bundle with the given files and commits it.
func write(t *testing.T, s *File, when time.Time, files map[string][]byte) *bundle.Metadata {
	t.Helper()
	id := bundle.NewID(when, []byte("crasher"))
	w, err := s.Put(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		f, err := w.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	m := &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: when, Comm: "crasher"}
	if err := w.Commit(ctx, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func ids(list []*bundle.Metadata) []string {
	var out []string
	for _, m := range list {
		out = append(out, m.ID)
	}
	return out
}

func TestPutCommit(t *testing.T) {
	s := newStore(t)
	when := day0.Add(90 * time.Minute)
	id := bundle.NewID(when, []byte("crasher"))
	w, err := s.Put(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		bundle.CoreFile:           randomBytes(10_000),
		"sysroot/usr/bin/crasher": []byte("exe"),
		"proc/cmdline":            []byte("crasher\x00"),
	}
	for name, data := range files {
		f, err := w.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(data)
		f.Close()
	}
	for _, name := range []string{"../x", "/abs", ".lock", bundle.CoreFile} {
		if _, err := w.Create(name); err == nil {
			t.Errorf("Create(%q) succeeded", name)
		}
	}
	if list, err := s.List(ctx); err != nil || len(list) != 0 {
		t.Errorf("before Commit List = %v, %v; want nothing", ids(list), err)
	}
	if _, err := s.Get(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("before Commit Get = %v, want ErrNotFound", err)
	}
	if u, err := s.Usage(ctx); err != nil || u.Bundles != 0 {
		t.Errorf("before Commit Usage = %+v, %v", u, err)
	}

	m := &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: when, Comm: "crasher", PID: 42}
	if err := w.Commit(ctx, m); err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(s.Root(), "2024", "02", "27", id)
	for name, data := range files {
		if got, err := os.ReadFile(filepath.Join(final, name)); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s after Commit: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(final, lockFile)); err == nil {
		t.Error("the lock file was published with the bundle")
	}
	if entries, _ := os.ReadDir(filepath.Join(s.Root(), tmpDir)); len(entries) != 0 {
		t.Errorf("%s still holds %v", tmpDir, entries)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 || !reflect.DeepEqual(list[0], m) {
		t.Fatalf("List = %v, %v; want [%s]", ids(list), err, id)
	}
	if got, err := s.Get(ctx, id); err != nil || !reflect.DeepEqual(got, m) {
		t.Errorf("Get = %+v, %v", got, err)
	}
	r, err := s.Open(ctx, id, bundle.CoreFile)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if !bytes.Equal(got, files[bundle.CoreFile]) {
		t.Error("Open returned other bytes than were written")
	}
	if _, err := s.Open(ctx, id, "proc/environ"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open(missing file) = %v, want ErrNotFound", err)
	}
	if err := w.Abort(); err != nil {
		t.Errorf("Abort after Commit: %v", err)
	}
	if _, err := s.Get(ctx, id); err != nil {
		t.Errorf("Abort after Commit removed the bundle: %v", err)
	}
	if _, err := s.Put(ctx, "../../etc"); err == nil {
		t.Error("Put accepted an id that is not one")
	}
}

func TestAbort(t *testing.T) {
	s := newStore(t)
	id := bundle.NewID(day0, []byte("crasher"))
	w, err := s.Put(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	f, err := w.Create("sysroot/a/b")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	tmp := filepath.Join(s.Root(), tmpDir, id)
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("no temporary bundle while writing: %v", err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Abort left %s: %v", tmp, err)
	}
	if err := w.Abort(); err != nil {
		t.Errorf("second Abort: %v", err)
	}
	if list, _ := s.List(ctx); len(list) != 0 {
		t.Errorf("List after Abort = %v", ids(list))
	}
}

// opened returns the names inotify saw opened in a watched directory.
func opened(t *testing.T, fd int) []string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Read(fd, buf)
	if errors.Is(err, unix.EAGAIN) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
		names = append(names, strings.TrimRight(string(name), "\x00"))
		off += unix.SizeofInotifyEvent + int(ev.Len)
	}
	return names
}

func TestListNewestFirstReadsOnlyMetadata(t *testing.T) {
	s := newStore(t)
	var want []string
	var dirs []string
	// Written out of order; two on one day, one a second later.
	for _, when := range []time.Time{day0.Add(48 * time.Hour), day0, day0.Add(48*time.Hour + time.Second), day0.Add(24 * time.Hour)} {
		m := write(t, s, when, map[string][]byte{bundle.CoreFile: []byte("core"), "sysroot/lib/x": []byte("lib")})
		dir, _ := s.BundleDir(m.ID)
		dirs = append(dirs, dir)
		want = append(want, m.ID)
	}
	want = []string{want[2], want[0], want[3], want[1]}

	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, dir := range dirs {
		if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_OPEN|unix.IN_ACCESS); err != nil {
			t.Fatal(err)
		}
	}
	list, err := s.List(ctx)
	if err != nil || !reflect.DeepEqual(ids(list), want) {
		t.Fatalf("List = %v, %v; want newest first %v", ids(list), err, want)
	}
	seen := 0
	for _, name := range opened(t, fd) {
		if name != bundle.MetadataFile {
			t.Errorf("List opened %q in a bundle; it must read metadata only", name)
		}
		seen++
	}
	if seen < len(dirs) {
		t.Errorf("inotify saw %d opens for %d bundles: the watch does not work", seen, len(dirs))
	}

	// A damaged bundle is reported but hides no other.
	broken := filepath.Join(s.Root(), "2024", "02", "27", bundle.NewID(day0, []byte("broken")))
	os.MkdirAll(broken, 0o700)
	os.WriteFile(filepath.Join(broken, bundle.MetadataFile), []byte("{"), 0o600)
	list, err = s.List(ctx)
	if err == nil || !reflect.DeepEqual(ids(list), want) {
		t.Errorf("List with a damaged bundle = %v, %v; want %v and an error", ids(list), err, want)
	}
}

func TestOpenRejects(t *testing.T) {
	s := newStore(t)
	m := write(t, s, day0, map[string][]byte{bundle.CoreFile: []byte("core")})
	for _, name := range []string{"../x", "/abs", "a/../../b", "..", ".", "", "sysroot/../metadata.json", "a//b", "./core.zst", lockFile,
		"../../../../../../etc/passwd"} {
		if r, err := s.Open(ctx, m.ID, name); err == nil {
			r.Close()
			t.Errorf("Open(%q) succeeded", name)
		}
	}
	for _, id := range []string{"../x", "", "20240227-100000-crasher-abcdef/../.."} {
		if r, err := s.Open(ctx, id, bundle.MetadataFile); err == nil {
			r.Close()
			t.Errorf("Open(id %q) succeeded", id)
		}
	}
}

func TestDelete(t *testing.T) {
	s := newStore(t)
	a := write(t, s, day0, nil)
	b := write(t, s, day0.Add(time.Hour), nil)
	c := write(t, s, day0.Add(24*time.Hour), nil)
	if err := s.Delete(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, a.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete = %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "2024/02/27")); err != nil {
		t.Errorf("Delete removed a day that still holds a bundle: %v", err)
	}
	for _, id := range []string{b.ID, c.ID} {
		if err := s.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(s.Root())
	if err != nil || len(entries) != 1 || entries[0].Name() != tmpDir {
		t.Errorf("after deleting every bundle the store holds %v, %v; want only %s (empty date dirs removed, root kept)", entries, err, tmpDir)
	}
	if err := s.Delete(ctx, a.ID); err != nil {
		t.Errorf("deleting a missing bundle: %v", err)
	}
	if err := s.Delete(ctx, "../.."); err == nil {
		t.Error("Delete accepted an id that is not one")
	}
}

func TestCleanStale(t *testing.T) {
	s := newStore(t)
	if err := s.CleanStale(); err != nil {
		t.Fatalf("CleanStale on a new store: %v", err)
	}
	liveID := bundle.NewID(day0, []byte("live"))
	live, err := s.Put(ctx, liveID)
	if err != nil {
		t.Fatal(err)
	}
	deadID := bundle.NewID(day0, []byte("dead"))
	dead, err := s.Put(ctx, deadID)
	if err != nil {
		t.Fatal(err)
	}
	dead.(*fileWriter).lock.Close() // the helper died: the kernel dropped its lock
	noLock := filepath.Join(s.Root(), tmpDir, bundle.NewID(day0, []byte("nolock")))
	if err := os.MkdirAll(filepath.Join(noLock, "sysroot"), 0o700); err != nil {
		t.Fatal(err)
	}

	// Young entries stay, whatever their lock says: a live helper may be
	// between two steps.
	if err := s.CleanStale(); err != nil {
		t.Fatal(err)
	}
	for _, young := range []string{filepath.Join(s.Root(), tmpDir, deadID), noLock} {
		if _, err := os.Stat(young); err != nil {
			t.Errorf("CleanStale removed %s, younger than %s: %v", young, staleAfter, err)
		}
	}
	defer func(old time.Duration) { staleAfter = old }(staleAfter)
	staleAfter = 0
	if err := s.CleanStale(); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{filepath.Join(s.Root(), tmpDir, deadID), noLock} {
		if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("CleanStale kept %s: %v", gone, err)
		}
	}
	f, err := live.Create(bundle.CoreFile)
	if err != nil {
		t.Fatalf("CleanStale disturbed a live writer: %v", err)
	}
	f.Close()
	if err := live.Commit(ctx, &bundle.Metadata{Schema: bundle.Schema, ID: liveID, Time: day0}); err != nil {
		t.Fatalf("Commit after CleanStale: %v", err)
	}
	if list, _ := s.List(ctx); len(list) != 1 {
		t.Errorf("List = %v, want the live bundle", ids(list))
	}
}

func TestVacuum(t *testing.T) {
	now := day0.Add(30 * 24 * time.Hour)
	defer func(old func() time.Time) { timeNow = old }(timeNow)
	timeNow = func() time.Time { return now }
	ages := []time.Duration{20 * 24 * time.Hour, 10 * 24 * time.Hour, 24 * time.Hour} // oldest first

	for _, tc := range []struct {
		name string
		// retention from the disk bytes of each bundle, oldest first
		retention func(sizes []int64) Retention
		keep      int // index of the bundle to keep, -1 for none
		deleted   []int
	}{
		{"no bounds", func([]int64) Retention { return Retention{} }, -1, nil},
		{"max age", func([]int64) Retention { return Retention{MaxAge: 14 * 24 * time.Hour} }, -1, []int{0}},
		{"max age keeps the kept", func([]int64) Retention { return Retention{MaxAge: 5 * 24 * time.Hour} }, 0, []int{1}},
		{"max use, oldest first", func(s []int64) Retention { return Retention{MaxUse: s[0] + s[1] + s[2] - 1} }, -1, []int{0}},
		{"max use, never the kept", func(s []int64) Retention { return Retention{MaxUse: s[0] + s[1] + s[2] - 1} }, 0, []int{1}},
		{"max use down to one", func(s []int64) Retention { return Retention{MaxUse: s[2]} }, -1, []int{0, 1}},
		{"max use below the kept", func(s []int64) Retention { return Retention{MaxUse: 1} }, 2, []int{0, 1}},
		{"keep free beyond the disk", func([]int64) Retention { return Retention{KeepFree: 1 << 62} }, 1, []int{0, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			var all []string
			var sizes []int64
			for _, age := range ages {
				m := write(t, s, now.Add(-age), map[string][]byte{bundle.CoreFile: randomBytes(64 << 10)})
				dir, _ := s.BundleDir(m.ID)
				all = append(all, m.ID)
				sizes = append(sizes, diskBytes(dir))
			}
			keep := ""
			if tc.keep >= 0 {
				keep = all[tc.keep]
			}
			var want []string
			for _, i := range tc.deleted {
				want = append(want, all[i])
			}
			got, err := s.Vacuum(ctx, tc.retention(sizes), keep)
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("Vacuum deleted %v, %v; want %v", got, err, want)
			}
			list, _ := s.List(ctx)
			if len(list) != len(all)-len(want) {
				t.Errorf("store holds %v after deleting %v", ids(list), want)
			}
		})
	}
}

func TestSpaceRoom(t *testing.T) {
	room := func(s *File, r Retention) int64 {
		t.Helper()
		sp, err := s.Space(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		return sp.Room()
	}
	if got := room(NewFile(filepath.Join(t.TempDir(), "absent")), Retention{}); got != -1 {
		t.Errorf("Room of a store without a filesystem yet, no bounds = %d, want -1", got)
	}
	s := newStore(t)
	write(t, s, day0, map[string][]byte{bundle.CoreFile: randomBytes(64 << 10)})
	u, err := s.Usage(ctx)
	if err != nil || u.Bundles != 1 || u.Bytes < 64<<10 || u.FSSize == 0 || u.FSFree < 1<<20 {
		t.Fatalf("Usage = %+v, %v", u, err)
	}
	for _, tc := range []struct {
		name string
		r    Retention
		want int64
	}{
		{"max use leaves 4096", Retention{MaxUse: u.Bytes + 4096}, 4096},
		{"max use exceeded", Retention{MaxUse: u.Bytes / 2}, 0},
		{"keep free beyond the disk", Retention{KeepFree: u.FSSize + 1}, 0},
		{"both, max use tighter", Retention{MaxUse: u.Bytes + 10, KeepFree: 1}, 10},
		{"no bounds", Retention{}, -1},
	} {
		if got := room(s, tc.r); got != tc.want {
			t.Errorf("%s: Room = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestSpaceFreeOldest checks that a new bundle gets room by deleting the
// oldest bundles, one at a time, and that the room grows by what they took.
func TestSpaceFreeOldest(t *testing.T) {
	s := newStore(t)
	first := write(t, s, day0, map[string][]byte{bundle.CoreFile: randomBytes(64 << 10)})
	second := write(t, s, day0.Add(time.Hour), map[string][]byte{bundle.CoreFile: randomBytes(64 << 10)})
	u, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := s.Space(ctx, Retention{MaxUse: u.Bytes})
	if err != nil {
		t.Fatal(err)
	}
	if sp.Room() != 0 {
		t.Fatalf("Room = %d, want 0 with the store at max_use", sp.Room())
	}
	if id, err := sp.FreeOldest(ctx); err != nil || id != first.ID {
		t.Fatalf("FreeOldest = %q, %v; want the oldest, %q", id, err, first.ID)
	}
	if sp.Room() < 64<<10 {
		t.Errorf("Room after freeing a 64 KiB bundle = %d", sp.Room())
	}
	if id, _ := sp.FreeOldest(ctx); id != second.ID {
		t.Errorf("second FreeOldest = %q, want %q", id, second.ID)
	}
	if id, err := sp.FreeOldest(ctx); id != "" || err != nil {
		t.Errorf("FreeOldest on an empty store = %q, %v", id, err)
	}
}

func TestOpenURL(t *testing.T) {
	for _, tc := range []struct {
		url, root, mention string
	}{
		{url: "file:///var/lib/corecatch/bundles", root: "/var/lib/corecatch/bundles"},
		{url: "/srv/cores", root: "/srv/cores"},
		{url: "file://localhost/srv/cores", root: "/srv/cores"},
		{url: "file:///srv/x/../cores/", root: "/srv/cores"},
		{url: "relative/path", mention: "absolute"},
		{url: "file:relative", mention: "absolute"},
		{url: "file://host/srv/cores", mention: "file:///"},
		{url: "gs://bucket/prefix", mention: "unknown scheme \"gs\" (supported: file://, s3://)"},
		{url: "s3:///prefix", mention: "name the bucket"},
		{url: "%zz", mention: "store URL"},
	} {
		st, err := Open(tc.url, Options{})
		if tc.mention != "" {
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("Open(%q) = %v, %v; want an error mentioning %q", tc.url, st, err, tc.mention)
			}
			continue
		}
		f, ok := st.(*File)
		if err != nil || !ok || f.Root() != tc.root || f.String() != "file://"+tc.root {
			t.Errorf("Open(%q) = %v, %v; want the file store at %s", tc.url, st, err, tc.root)
		}
	}
	for url, want := range map[string]string{"s3://cores/a/b/": "s3://cores/a/b", "s3://cores": "s3://cores"} {
		st, err := Open(url, Options{S3: S3Options{Endpoint: "http://127.0.0.1:9", PathStyle: true}})
		if _, ok := st.(*S3); err != nil || !ok || st.String() != want {
			t.Errorf("Open(%q) = %v, %v; want the S3 store %s", url, st, err, want)
		}
	}
	if _, err := Open("s3://cores", Options{S3: S3Options{Endpoint: "ftp://host"}}); err == nil || !strings.Contains(err.Error(), "https://host") {
		t.Errorf("Open with an ftp:// endpoint: %v, want an error that shows the endpoint's forms", err)
	}
}

// TestCommitRacesCleanStale publishes bundles from several writers while
// others clean stale entries in a tight loop, with every locked entry old
// enough to be cleaned: only the lock protects a bundle being published, and no
// bundle may be lost. (Unlinking the lock before the rename lost about 2%.)
func TestCommitRacesCleanStale(t *testing.T) {
	defer func(old time.Duration) { staleAfter = old }(staleAfter)
	staleAfter = 0
	s := newStore(t)
	const writers, each = 4, 150
	stop := make(chan struct{})
	var cleaners sync.WaitGroup
	for range 2 {
		cleaners.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := s.CleanStale(); err != nil && !errors.Is(err, os.ErrNotExist) {
					t.Errorf("CleanStale: %v", err)
					return
				}
			}
		})
	}
	var wg sync.WaitGroup
	published := make(chan string, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				id := bundle.NewID(day0.Add(time.Duration(w*each+i)*time.Second), []byte("racer"))
				bw, err := s.Put(ctx, id)
				if err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				f, err := bw.Create(bundle.CoreFile)
				if err != nil {
					t.Errorf("Create: %v", err)
					return
				}
				f.Write([]byte("core"))
				f.Close()
				if err := bw.Commit(ctx, &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: day0}); err != nil {
					t.Errorf("Commit %s: %v", id, err)
					return
				}
				published <- id
			}
		})
	}
	wg.Wait()
	close(stop)
	cleaners.Wait()
	close(published)
	var lost []string
	n := 0
	for id := range published {
		n++
		dir, _ := s.BundleDir(id)
		if _, err := os.Stat(filepath.Join(dir, bundle.CoreFile)); err != nil {
			lost = append(lost, id)
			continue
		}
		if _, err := s.Get(ctx, id); err != nil {
			lost = append(lost, id)
		}
	}
	if n != writers*each || len(lost) > 0 {
		t.Errorf("%d bundles published of %d; %d lost to a concurrent CleanStale: %v", n, writers*each, len(lost), lost)
	}
}
