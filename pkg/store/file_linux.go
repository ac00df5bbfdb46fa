package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// tmpDir holds bundles being written. It lives inside the store's root so
// that publishing a bundle is a rename within one filesystem.
const tmpDir = ".tmp"

// lockFile, inside each temporary bundle, is flock-ed by the writing helper
// for as long as it runs. A temporary bundle whose lock can be taken belongs
// to a helper that died, and is removed by the next helper (CleanStale).
const lockFile = ".lock"

// stagingPrefix names a temporary bundle whose lock is not taken yet.
const stagingPrefix = ".new-"

// File is a store in a local directory, laid out as
// <root>/<yyyy>/<mm>/<dd>/<id>/{metadata.json,core.zst,sysroot/...,proc/...}.
type File struct {
	root string
}

// NewFile returns the file store rooted at root. The directory is created on
// the first write.
func NewFile(root string) *File { return &File{root: filepath.Clean(root)} }

// String returns the store's URL.
func (s *File) String() string { return "file://" + s.root }

// Root returns the store's directory.
func (s *File) Root() string { return s.root }

// Put starts a bundle under <root>/.tmp/<id>, locked against cleanup.
func (s *File) Put(ctx context.Context, id string) (Writer, error) {
	final, err := bundle.Dir(id)
	if err != nil {
		return nil, err
	}
	// The bundle is made and locked under a staging name CleanStale leaves
	// alone, then renamed: a concurrent helper's CleanStale must never see
	// it unlocked.
	tmp := filepath.Join(s.root, tmpDir, id)
	staging := filepath.Join(s.root, tmpDir, stagingPrefix+id)
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return nil, fmt.Errorf("create bundle in %s: %w (check that the store directory is writable and its disk not full)", s.root, err)
	}
	lock, err := os.OpenFile(filepath.Join(staging, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			err = os.Rename(staging, tmp)
		}
		if err != nil {
			lock.Close()
		}
	}
	if err != nil {
		os.RemoveAll(staging)
		return nil, fmt.Errorf("lock new bundle %s: %w", tmp, err)
	}
	return &fileWriter{store: s, tmp: tmp, final: filepath.Join(s.root, filepath.FromSlash(final)), lock: lock}, nil
}

// staleAfter is how old a temporary bundle must be before CleanStale may
// remove it, whatever its lock says: a helper sets up, locks and publishes
// its bundle well within it, so no step of a live helper's can be mistaken
// for a dead one's. A bundle being set up (stagingPrefix: not locked yet)
// always waits this minute; tests shorten it for the others, which their
// lock protects on its own.
var staleAfter = time.Minute

const stagingAfter = time.Minute

// CleanStale removes temporary bundles left by helpers that died halfway:
// those older than staleAfter whose lock nobody holds. A helper that is
// still writing holds its bundle's lock until its bundle is renamed into
// place (Commit), so it is never disturbed.
func (s *File) CleanStale() error {
	dir := filepath.Join(s.root, tmpDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		age := staleAfter
		if strings.HasPrefix(e.Name(), stagingPrefix) {
			age = stagingAfter
		}
		if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < age {
			continue // gone meanwhile, or young: a live helper's
		}
		lock, err := os.OpenFile(filepath.Join(p, lockFile), os.O_RDWR, 0)
		if err == nil {
			err = unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if errors.Is(err, unix.EWOULDBLOCK) {
				lock.Close()
				continue // a live helper is writing it
			}
		}
		// Locked by us, or without a lock file at all: stale either way.
		errs = append(errs, os.RemoveAll(p))
		if lock != nil {
			lock.Close()
		}
	}
	return errors.Join(errs...)
}

// BundleDir returns where a published bundle lives, for the uploader that
// reads its files directly (sizes, ReadAt) rather than through Open.
func (s *File) BundleDir(id string) (string, error) {
	rel, err := bundle.Dir(id)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.root, filepath.FromSlash(rel)), nil
}

// IDs returns the ids of every published bundle, oldest first: the order
// retention deletes and the uploader uploads in. Ids start with their UTC
// time to the second; within one second, the time each was published (its
// directory's mtime) decides.
func (s *File) IDs() ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(s.root, "[0-9][0-9][0-9][0-9]", "[0-9][0-9]", "[0-9][0-9]", "*"))
	if err != nil {
		return nil, err
	}
	type entry struct {
		id    string
		mtime time.Time
	}
	var list []entry
	for _, m := range matches {
		if id := filepath.Base(m); bundle.ValidID(id) == nil {
			e := entry{id: id}
			if info, err := os.Stat(m); err == nil {
				e.mtime = info.ModTime()
			}
			list = append(list, e)
		}
	}
	sort.Slice(list, func(i, j int) bool {
		if a, b := list[i].id[:15], list[j].id[:15]; a != b {
			return a < b
		}
		return list[i].mtime.Before(list[j].mtime)
	})
	ids := make([]string, len(list))
	for i, e := range list {
		ids[i] = e.id
	}
	return ids, nil
}

// List returns the metadata of every complete bundle, newest first. A
// bundle whose metadata cannot be read twice is reported in a Skipped
// error but does not hide the others.
func (s *File) List(ctx context.Context) ([]*bundle.Metadata, error) {
	ids, err := s.IDs()
	if err != nil {
		return nil, err
	}
	slices.Reverse(ids)
	return collect(ctx, ids, 4, s.Get)
}

// Get reads one bundle's metadata.json.
func (s *File) Get(ctx context.Context, id string) (*bundle.Metadata, error) {
	dir, err := s.BundleDir(id)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(dir, bundle.MetadataFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("bundle %s in %s: %w", id, s, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", id, err)
	}
	defer f.Close()
	m, err := bundle.ReadMetadata(id, f)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", id, err)
	}
	return m, nil
}

// cleanName checks a bundle-relative file name and returns it as a relative
// OS path that cannot leave the bundle.
func cleanName(name string) (string, error) {
	c := path.Clean(name)
	if c != name || c == "." || path.IsAbs(c) || c == ".." || strings.HasPrefix(c, "../") || c == lockFile || c == sizeFile {
		return "", fmt.Errorf("bundle file name %q is not a clean relative name", name)
	}
	return filepath.FromSlash(c), nil
}

// updateLock serialises metadata updates in one store.
const updateLock = ".update.lock"

// Update rewrites a published bundle's metadata.json: a new file, synced,
// renamed over the old one, so readers see either version whole.
func (s *File) Update(ctx context.Context, id string, fn func(*bundle.Metadata) error) error {
	dir, err := s.BundleDir(id)
	if err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(s.root, updateLock), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("update bundle %s: %w", id, err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("update bundle %s: %w", id, err)
	}
	m, err := s.Get(ctx, id)
	if err != nil {
		return err
	}
	if err := fn(m); err != nil {
		return err
	}
	data, err := bundle.Encode(m)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".metadata.json.new")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("update bundle %s: %w", id, err)
	}
	if err := syncPath(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, bundle.MetadataFile)); err != nil {
		return fmt.Errorf("update bundle %s: %w", id, err)
	}
	return syncPath(dir)
}

// Open reads one file of a bundle.
func (s *File) Open(ctx context.Context, id, name string) (io.ReadCloser, error) {
	dir, err := s.BundleDir(id)
	if err != nil {
		return nil, err
	}
	rel, err := cleanName(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(dir, rel))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s of bundle %s: %w", name, id, ErrNotFound)
	}
	return f, err
}

// Delete removes a bundle and the date directories it leaves empty.
func (s *File) Delete(ctx context.Context, id string) error {
	dir, err := s.BundleDir(id)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("delete bundle %s: %w", id, err)
	}
	for p := filepath.Dir(dir); p != s.root && strings.HasPrefix(p, s.root); p = filepath.Dir(p) {
		if os.Remove(p) != nil {
			break // not empty
		}
	}
	return nil
}

// diskBytes is what a directory tree takes on disk (allocated blocks, so
// that sparse and compressed files count as what they cost).
func diskBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// sizeFile records, in each published bundle, what it takes on disk: every
// helper measures the store before and after writing, and reading one small
// file per bundle keeps that cheap in a crash storm, where walking every
// file of every bundle made each crash slower than the last.
const sizeFile = ".disk_bytes"

// bundleBytes is what a published bundle takes on disk, from its size file
// or, for bundles written before it existed, by walking it.
func bundleBytes(dir string) int64 {
	if data, err := os.ReadFile(filepath.Join(dir, sizeFile)); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err == nil {
			return n
		}
	}
	return diskBytes(dir)
}

// Usage reports the bytes published bundles take on disk and what their
// filesystem has left.
func (s *File) Usage(ctx context.Context) (Usage, error) {
	ids, err := s.IDs()
	if err != nil {
		return Usage{}, err
	}
	u := Usage{Bundles: len(ids)}
	for _, id := range ids {
		dir, _ := s.BundleDir(id)
		u.Bytes += bundleBytes(dir)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.root, &st); err == nil {
		u.FSSize = int64(st.Blocks) * st.Bsize
		u.FSFree = int64(st.Bavail) * st.Bsize
	}
	return u, nil
}

// Space is the room one bundle being written may take under a retention
// policy. It knows the store's published bundles, oldest first, and deletes
// them one at a time when the new bundle needs their room: the newest crash
// is kept before older ones, as systemd-coredump does. Helpers of
// simultaneous crashes share the store, so every deletion happens under the
// store's retention lock on a fresh look at the store.
//
// The rule a new bundle follows, so that it never pushes out a bundle
// retention would keep: it may take Room, and beyond it only the room of
// the oldest bundles, which are exactly the ones retention deletes first
// once the new bundle is published (Vacuum after Commit). Nothing is
// reserved in advance: what a bundle charges is what it has written (its
// compressed core, its captured files' data bytes, never their holes), so
// an estimate never deletes a bundle that the published bundle would have
// left room for. The captured files' total is bounded besides, by
// collect.max_files_total_bytes. A Space is safe for concurrent use: the
// core stream and the capture of files share one.
type Space struct {
	mu     sync.Mutex
	store  *File
	r      Retention
	keep   string
	bytes  int64 // published bundles' bytes on disk
	free   int64 // the filesystem's free bytes; -1 when unknown
	oldest []string
}

// retentionLock serialises retention between helpers of one store.
const retentionLock = ".retention.lock"

// Space measures the store for a bundle about to be written under r.
func (s *File) Space(ctx context.Context, r Retention) (*Space, error) {
	sp := &Space{store: s, r: r}
	return sp, sp.refresh(ctx)
}

// refresh measures the store again.
func (sp *Space) refresh(ctx context.Context) error {
	ids, err := sp.store.IDs()
	if err != nil {
		return err
	}
	u, err := sp.store.Usage(ctx)
	if err != nil {
		return err
	}
	sp.bytes, sp.free, sp.oldest = u.Bytes, -1, ids[:0:0]
	if u.FSSize > 0 {
		sp.free = u.FSFree
	}
	for _, id := range ids {
		if id != sp.keep {
			sp.oldest = append(sp.oldest, id)
		}
	}
	return nil
}

// locked runs fn under the store's retention lock, on a fresh look at the
// store.
func (sp *Space) locked(ctx context.Context, fn func() error) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if err := os.MkdirAll(sp.store.root, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(sp.store.root, retentionLock), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("retention lock: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("retention lock: %w", err)
	}
	if err := sp.refresh(ctx); err != nil {
		return err
	}
	return fn()
}

// Room returns how many bytes the new bundle may take in all, or -1 when
// no bound applies.
func (sp *Space) Room() int64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	room := int64(-1)
	if sp.r.MaxUse > 0 {
		room = max(sp.r.MaxUse-sp.bytes, 0)
	}
	if sp.free >= 0 && sp.r.KeepFree > 0 {
		if free := max(sp.free-sp.r.KeepFree, 0); room < 0 || free < room {
			room = free
		}
	}
	return room
}

// MaxRoom is Room once every older bundle is deleted: the most the new
// bundle can ever take, or -1 when no bound applies. A bundle that would
// not fit even then deletes nothing for its next bytes.
func (sp *Space) MaxRoom() int64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	room := int64(-1)
	if sp.r.MaxUse > 0 {
		room = sp.r.MaxUse
	}
	if sp.free >= 0 && sp.r.KeepFree > 0 {
		if free := max(sp.free+sp.bytes-sp.r.KeepFree, 0); room < 0 || free < room {
			room = free
		}
	}
	return room
}

// over reports whether the published bundles alone break the policy.
func (sp *Space) over() bool {
	return (sp.r.MaxUse > 0 && sp.bytes > sp.r.MaxUse) || (sp.free >= 0 && sp.r.KeepFree > 0 && sp.free < sp.r.KeepFree)
}

// FreeOldest deletes the oldest published bundle and returns its id, or ""
// when none is left to delete.
func (sp *Space) FreeOldest(ctx context.Context) (string, error) {
	var id string
	err := sp.locked(ctx, func() error {
		if len(sp.oldest) == 0 {
			return nil
		}
		id = sp.oldest[0]
		return sp.remove(ctx, id)
	})
	return id, err
}

// remove deletes a bundle and counts the room it gave back.
func (sp *Space) remove(ctx context.Context, id string) error {
	dir, err := sp.store.BundleDir(id)
	if err != nil {
		return err
	}
	size := bundleBytes(dir)
	if err := sp.store.Delete(ctx, id); err != nil {
		return err
	}
	sp.oldest = slices.DeleteFunc(sp.oldest, func(x string) bool { return x == id })
	sp.bytes -= size
	if sp.free >= 0 {
		sp.free += size
	}
	return nil
}

// Vacuum deletes bundles older than r.MaxAge, then the oldest bundles
// until r holds. It returns the ids it deleted.
func (sp *Space) Vacuum(ctx context.Context) ([]string, error) {
	var deleted []string
	err := sp.locked(ctx, func() error {
		now := timeNow()
		for _, id := range slices.Clone(sp.oldest) {
			if t, err := bundle.IDTime(id); sp.r.MaxAge <= 0 || err != nil || now.Sub(t) <= sp.r.MaxAge {
				continue
			}
			if err := sp.remove(ctx, id); err != nil {
				return err
			}
			deleted = append(deleted, id)
		}
		for sp.over() && len(sp.oldest) > 0 {
			id := sp.oldest[0]
			if err := sp.remove(ctx, id); err != nil {
				return err
			}
			deleted = append(deleted, id)
		}
		return nil
	})
	return deleted, err
}

// Vacuum applies r to the store now, never deleting keep (the bundle just
// written). It returns the ids it deleted.
func (s *File) Vacuum(ctx context.Context, r Retention, keep string) ([]string, error) {
	sp := &Space{store: s, r: r, keep: keep}
	return sp.Vacuum(ctx)
}

// timeNow is the clock retention ages bundles against; tests replace it.
var timeNow = time.Now

// fileWriter writes one bundle into <root>/.tmp/<id>.
type fileWriter struct {
	store *File
	tmp   string
	final string
	lock  *os.File

	mu    sync.Mutex
	names []string
	done  bool
}

func (w *fileWriter) Create(name string) (io.WriteCloser, error) {
	rel, err := cleanName(name)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(w.tmp, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	w.mu.Lock()
	w.names = append(w.names, rel)
	w.mu.Unlock()
	return f, nil
}

// KeepsHoles reports that the files Create returns can seek past holes and
// be truncated to their length, so a sparse file's copy stays sparse.
func (w *fileWriter) KeepsHoles() bool { return true }

// Commit writes metadata.json, fsyncs every file and directory of the
// bundle, and renames it into place: a crash at any point leaves either no
// bundle or a whole one.
func (w *fileWriter) Commit(ctx context.Context, m *bundle.Metadata) error {
	data, err := bundle.Encode(m)
	if err != nil {
		return err
	}
	mf, err := w.Create(bundle.MetadataFile)
	if err != nil {
		return err
	}
	if _, err := mf.Write(data); err != nil {
		mf.Close()
		return fmt.Errorf("write %s: %w", bundle.MetadataFile, err)
	}
	if err := mf.Close(); err != nil {
		return fmt.Errorf("write %s: %w", bundle.MetadataFile, err)
	}
	dirs := map[string]bool{w.tmp: true}
	for _, rel := range w.names {
		p := filepath.Join(w.tmp, rel)
		if err := syncPath(p); err != nil {
			return err
		}
		for d := filepath.Dir(p); strings.HasPrefix(d, w.tmp); d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	// The size file's own block is counted in advance.
	size := strconv.FormatInt(diskBytes(w.tmp)+4096, 10)
	if err := os.WriteFile(filepath.Join(w.tmp, sizeFile), []byte(size), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", sizeFile, err)
	}
	if err := syncPath(filepath.Join(w.tmp, sizeFile)); err != nil {
		return err
	}
	for d := range dirs {
		if err := syncPath(d); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(w.final), 0o700); err != nil {
		return fmt.Errorf("publish bundle: %w", err)
	}
	// Rename while the lock is held, and only then drop it: until the
	// rename a concurrent CleanStale finds the lock taken, and after it
	// nothing is left under .tmp to clean. (Unlinking the lock first let a
	// cleaner take the bundle for a dead helper's and delete it as it was
	// published.)
	if err := os.Rename(w.tmp, w.final); err != nil {
		return fmt.Errorf("publish bundle %s: %w", w.final, err)
	}
	w.done = true
	os.Remove(filepath.Join(w.final, lockFile))
	w.lock.Close()
	// Make the rename itself durable.
	return syncPath(filepath.Dir(w.final))
}

func (w *fileWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	err := os.RemoveAll(w.tmp)
	w.lock.Close()
	return err
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w (is the disk full or failing?)", p, err)
	}
	return nil
}
