package bundle

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/zstd"
)

// fakeBundle is a bundle in memory: bundle-relative name → bytes.
type fakeBundle map[string][]byte

func (b fakeBundle) open(name string) (io.ReadCloser, error) {
	data, ok := b[name]
	if !ok {
		return nil, fmt.Errorf("open %s: %w", name, fs.ErrNotExist)
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// withZeroRuns returns size bytes of random data broken by runs of zeros of
// odd lengths, some longer than a page, one across the 1 MiB read buffer's
// boundary, and a zero tail.
func withZeroRuns(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.IntN(255) + 1)
	}
	zero := func(from, n int) {
		from = min(max(from, 0), size)
		clear(b[from:min(from+n, size)])
	}
	zero(3, 1)
	zero(4093, 3*4096+7)
	zero(100_001, 12_345)
	zero(1<<20-4096-1, 2*4096+3)
	zero(size/2, 65_537)
	zero(size-4096-17, 4096+17)
	return b
}

func zstdBytes(t *testing.T, data []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(data, nil)
}

func TestSparseCopy(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"one byte", []byte{7}},
		{"zeros only, odd length", make([]byte, 3*4096+5)},
		{"odd zero runs, 3 MiB", withZeroRuns(1, 3<<20+4095)},
		{"odd zero runs, under a page", withZeroRuns(2, 4000)},
		{"odd zero runs, 1 MiB plus a byte", withZeroRuns(3, 1<<20+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Create(filepath.Join(t.TempDir(), "out"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			n, err := SparseCopy(f, iotest.HalfReader(bytes.NewReader(tc.data)))
			if err != nil || n != int64(len(tc.data)) {
				t.Fatalf("SparseCopy = %d, %v; want %d, nil", n, err, len(tc.data))
			}
			if err := f.Truncate(n); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.data) {
				t.Fatalf("copy differs from its source (len %d vs %d)", len(got), len(tc.data))
			}
		})
	}
}

// outsideEntries lists what exists in parent besides the directory "out".
func outsideEntries(t *testing.T, parent string) []string {
	t.Helper()
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() != "out" {
			names = append(names, e.Name())
		}
	}
	return names
}

// checkSymlinksInside fails when a symlink under dir is absolute or points
// out of dir.
func checkSymlinksInside(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return err
		}
		target, err := os.Readlink(p)
		if err != nil {
			t.Fatal(err)
		}
		resolved := filepath.Join(filepath.Dir(p), target)
		if filepath.IsAbs(target) || !strings.HasPrefix(resolved, dir+string(filepath.Separator)) {
			t.Errorf("symlink %s -> %s leaves %s", p, target, dir)
		}
		return nil
	})
}

func TestMaterialize(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "out")
	const page = 4096
	core := make([]byte, 8<<20+123) // a trailing hole of odd length
	copy(core, bytes.Repeat([]byte("ELF!"), 300))
	copy(core[5<<20+page:], "data in the middle")
	exe := []byte("\x7fELF an executable")
	libc := []byte("\x7fELF a library")
	m := sampleMetadata()
	m.Core.StoredBytes = 1
	m.Files = []File{
		{Path: "/usr/bin/crasher", Role: "exe", Stored: "sysroot/usr/bin/crasher"},
		{Path: "/usr/lib/x86_64-linux-gnu/libc.so.6", Role: "mapped", Stored: "sysroot/usr/lib/x86_64-linux-gnu/libc.so.6",
			Aliases: []string{
				"/lib/x86_64-linux-gnu/libc.so.6",
				"/lib64/../libc-alias.so",
				"../../../../escape-alias", // hostile: stays in sysroot/
				"/usr/lib/x86_64-linux-gnu/libc.so.6",
				"/usr/bin/crasher", // a captured file's name: not replaced
			}},
		{Path: "/huge", Role: "mapped", Skipped: "too big"},
	}
	b := fakeBundle{
		CoreFile:                  zstdBytes(t, core),
		"sysroot/usr/bin/crasher": exe,
		"sysroot/usr/lib/x86_64-linux-gnu/libc.so.6": libc,
		"proc/cmdline": []byte("crasher\x00--arg\x00"),
		"proc/maps":    []byte("00400000-00401000 r-xp 00000000 08:01 1 /usr/bin/crasher\n"),
	}
	if err := Materialize(dir, m, b.open); err != nil {
		t.Fatal(err)
	}

	got, err := os.ReadFile(filepath.Join(dir, "core"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, core) {
		t.Fatalf("core differs from what was compressed (len %d vs %d)", len(got), len(core))
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "core"), &st); err != nil {
		t.Fatal(err)
	}
	// Two data pages plus the filesystem's rounding; the 8 MiB of zeros
	// must be holes.
	if allocated := st.Blocks * 512; allocated > 256<<10 {
		t.Errorf("core of %d bytes takes %d bytes on disk: zero pages were written, not skipped", len(core), allocated)
	}

	info, err := os.Stat(filepath.Join(dir, "sysroot/usr/bin/crasher"))
	if err != nil || info.Mode().Perm()&0o111 == 0 {
		t.Errorf("exe not executable: %v %v", info, err)
	}
	if info, err := os.Stat(filepath.Join(dir, "sysroot/usr/lib/x86_64-linux-gnu/libc.so.6")); err != nil || info.Mode().Perm()&0o111 != 0 {
		t.Errorf("library: %v %v (want a plain, non-executable file)", info, err)
	}
	for _, name := range []string{"proc/cmdline", "proc/maps"} {
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, b[name]) {
			t.Errorf("%s = %q, %v", name, got, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "proc/environ")); err == nil {
		t.Error("proc/environ written though the bundle has none")
	}
	data, err := os.ReadFile(filepath.Join(dir, MetadataFile))
	if err != nil {
		t.Fatal(err)
	}
	if back, err := Decode(data); err != nil || !reflect.DeepEqual(back, m) {
		t.Errorf("metadata.json = %+v, %v", back, err)
	}
	if p := m.ExePath(); p != "sysroot/usr/bin/crasher" {
		t.Errorf("ExePath = %q", p)
	}

	for _, alias := range []string{"lib/x86_64-linux-gnu/libc.so.6", "libc-alias.so", "escape-alias"} {
		p := filepath.Join(dir, SysrootDir, alias)
		target, err := os.Readlink(p)
		if err != nil {
			t.Errorf("alias %s: %v", alias, err)
			continue
		}
		if filepath.IsAbs(target) {
			t.Errorf("alias %s -> %s is absolute: the materialized directory would not move", alias, target)
		}
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, libc) {
			t.Errorf("alias %s reads %q, %v; want the library", alias, got, err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(dir, "sysroot/usr/bin/crasher")); err != nil || !bytes.Equal(got, exe) {
		t.Errorf("an alias replaced the captured exe: %q, %v", got, err)
	}
	checkSymlinksInside(t, dir)
	if out := outsideEntries(t, parent); len(out) > 0 {
		t.Errorf("Materialize wrote outside its directory: %v", out)
	}
}

func TestMaterializeHostile(t *testing.T) {
	for _, tc := range []struct {
		name string
		file File
	}{
		{"stored with ..", File{Path: "/x", Role: "exe", Stored: "../escape"}},
		{"stored deep ..", File{Path: "/x", Role: "mapped", Stored: "sysroot/../../escape"}},
		{"stored absolute", File{Path: "/x", Role: "mapped", Stored: "/tmp/corecatch-escape"}},
		{"alias with ..", File{Path: "/x", Role: "mapped", Stored: "sysroot/x", Aliases: []string{"../../../escape", "/../../escape2"}}},
		{"alias as a directory of the file", File{Path: "/x", Role: "mapped", Stored: "sysroot/x", Aliases: []string{"/x/y", "/", ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "out")
			m := sampleMetadata()
			m.Core.StoredBytes = 0
			m.Files = []File{tc.file}
			b := fakeBundle{tc.file.Stored: []byte("payload")}
			err := Materialize(dir, m, b.open)
			t.Logf("Materialize: %v", err)
			if out := outsideEntries(t, parent); len(out) > 0 {
				t.Errorf("Materialize wrote outside its directory: %v", out)
			}
			if _, err := os.Lstat("/tmp/corecatch-escape"); err == nil {
				os.Remove("/tmp/corecatch-escape")
				t.Error("Materialize wrote an absolute path")
			}
			checkSymlinksInside(t, dir)
		})
	}
}
