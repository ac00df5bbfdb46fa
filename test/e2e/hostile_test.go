package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
	"github.com/corecatch/corecatch/test/hostile"
)

// TestHostileDeletedExe crashes a process whose executable was deleted
// while it ran: the bundle must still hold the executable's exact bytes,
// read through the process, and gdb must still show the crash.
func TestHostileDeletedExe(t *testing.T) {
	n := harness.Install(t, "")
	exe := filepath.Join(n.Dir, "doomed")
	copyFile(t, buildSignals(t, n.Dir), exe)
	sum := sha256File(t, exe)
	cmd := exec.Command(exe, "segv", "--wait")
	m := collectCrash(t, n, cmd, func() error { return os.Remove(exe) })
	if _, err := os.Stat(exe); !os.IsNotExist(err) {
		t.Fatalf("%s still exists: %v", exe, err)
	}
	f := fileWhere(m, func(f *bundle.File) bool { return f.Role == "exe" })
	if f == nil {
		t.Fatalf("no file with role exe in %+v", m.Files)
	}
	if !f.Deleted || f.Path != exe || f.Stored == "" || f.SHA256 != sum {
		t.Errorf("exe file %+v, want deleted, path %q, captured with sha256 %s", f, exe, sum)
	}
	checkWholeCore(t, m)
	checkDebuggable(t, n, m, "crash_segv")
}

// TestHostileSwappedLibrary replaces a mapped library with a symlink to a
// host secret just before the crash, as a hostile container could: the
// bundle must hold the library the process mapped, and the secret must not
// reach the bundle or a pull of it.
func TestHostileSwappedLibrary(t *testing.T) {
	n := harness.Install(t, "")
	libDir := filepath.Join(n.Dir, "lib")
	if err := os.Mkdir(libDir, 0o755); err != nil {
		t.Fatal(err)
	}
	lib := harness.CC(t, libDir, "libvictim.so", []string{"libvictim.c"}, "-shared", "-fPIC")
	exe := harness.CC(t, n.Dir, "victim", []string{"victim.c"}, "-L"+libDir, "-lvictim", "-Wl,-rpath,"+libDir)
	libSum := sha256File(t, lib)

	var r [16]byte
	rand.Read(r[:])
	marker := "corecatch-host-secret-" + hex.EncodeToString(r[:])
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("root:"+marker+":\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(exe)
	m := collectCrash(t, n, cmd, func() error {
		swap := lib + ".swap"
		if err := os.Symlink(secret, swap); err != nil {
			return err
		}
		return os.Rename(swap, lib)
	})
	if data, err := os.ReadFile(lib); err != nil || !bytes.Contains(data, []byte(marker)) {
		t.Fatalf("%s does not lead to the secret after the swap (%v)", lib, err)
	}
	f := fileWhere(m, func(f *bundle.File) bool { return f.Path == lib })
	if f == nil {
		t.Fatalf("no file %s in %+v", lib, m.Files)
	}
	if f.Stored == "" || f.SHA256 != libSum {
		t.Errorf("library file %+v, want captured with the mapped library's sha256 %s", f, libSum)
	}
	checkWholeCore(t, m)
	pulled, _ := checkDebuggable(t, n, m, "crash_victim")
	for _, dir := range []string{n.BundleDir(m.ID), pulled} {
		checkNoMarker(t, dir, marker)
	}
}

// TestHostileNames gives the crasher task names that are hostile as file
// names and as text: the bundle must land where a bundle belongs in the
// store, and metadata must keep the exact name.
func TestHostileNames(t *testing.T) {
	harness.RequireRoot(t)
	exe := buildSignals(t, t.TempDir())
	names := []struct{ name, comm string }{
		{"spaces", "a  b c"},
		{"slash", "a/b"},
		{"traversal", "../../../etc/x"},
		{"newline", "evil\nname"},
		{"dotdot", ".."},
		{"dash", "-c /etc/passwd"},
		{"non-utf8", "\xff\xfe"},
		{"mixed", "\xc3(/.. \n"},
	}
	for _, c := range names {
		t.Run(c.name, func(t *testing.T) {
			n := harness.Install(t, "")
			m := collectCrash(t, n, exec.Command(exe, "segv", "--name", c.comm), nil)
			checkPlace(t, n, m)
			checkText(t, "comm", m.Comm, m.CommRaw, c.comm)
		})
	}
	t.Run("exe-path", func(t *testing.T) {
		n := harness.Install(t, "")
		dir := filepath.Join(n.Dir, "odd dir \xfe")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		odd := filepath.Join(dir, "odd exe \xff\xfe")
		copyFile(t, exe, odd)
		m := collectCrash(t, n, exec.Command(odd, "segv"), nil)
		checkPlace(t, n, m)
		checkText(t, "exe", m.Exe, m.ExeRaw, odd)
		checkText(t, "comm", m.Comm, m.CommRaw, filepath.Base(odd))
		f := fileWhere(m, func(f *bundle.File) bool { return f.Role == "exe" })
		if f == nil {
			t.Fatalf("no file with role exe in %+v", m.Files)
		}
		checkText(t, "exe file path", f.Path, f.PathRaw, odd)
		if f.Stored == "" || f.SHA256 != sha256File(t, odd) {
			t.Errorf("exe file %+v not captured with the executable's bytes", f)
		}
		checkDebuggable(t, n, m, "crash_segv")
	})
}

var idShape = regexp.MustCompile(`^\d{8}-\d{6}-[A-Za-z0-9_.-]{1,15}-[0-9a-f]{6}$`)

// checkPlace checks that a bundle's id has the documented shape and that
// the bundle, and every bundle, lies exactly at <store>/yyyy/mm/dd/<id>.
func checkPlace(t *testing.T, n *harness.Node, m *bundle.Metadata) {
	t.Helper()
	if !idShape.MatchString(m.ID) {
		t.Errorf("bundle id %q does not match %s", m.ID, idShape)
	}
	dir := n.BundleDir(m.ID)
	want := filepath.Join(n.Store, m.ID[0:4], m.ID[4:6], m.ID[6:8], m.ID)
	if dir != want {
		t.Errorf("bundle %s is at %s, want %s", m.ID, dir, want)
	}
	if _, err := os.Stat(filepath.Join(want, bundle.MetadataFile)); err != nil {
		t.Errorf("bundle %s: %v", m.ID, err)
	}
	filepath.WalkDir(n.Store, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Errorf("walk the store: %v", err)
			return nil
		}
		rel, _ := filepath.Rel(n.Store, p)
		if d.IsDir() && rel == ".tmp" {
			return fs.SkipDir
		}
		if d.Name() == bundle.MetadataFile && len(strings.Split(rel, "/")) != 5 {
			t.Errorf("a bundle lies at %q in the store, not at yyyy/mm/dd/id", rel)
		}
		return nil
	})
}

// checkText checks a metadata name against the exact bytes it stands for:
// the text itself when they are UTF-8, else a valid rendering plus the raw
// bytes.
func checkText(t *testing.T, what, text string, raw []byte, want string) {
	t.Helper()
	if utf8.ValidString(want) {
		if text != want || raw != nil {
			t.Errorf("%s %q (raw %q), want %q", what, text, raw, want)
		}
		return
	}
	if !bytes.Equal(raw, []byte(want)) || !utf8.ValidString(text) {
		t.Errorf("%s %q, raw %q: want raw bytes %q and a valid UTF-8 rendering", what, text, raw, want)
	}
}

// checkNoMarker reads every file under dir, decompressing core.zst, and
// fails if one holds marker. Symlinks may only point inside dir.
func checkNoMarker(t *testing.T, dir, marker string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Errorf("walk %s: %v", dir, err)
			return nil
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := filepath.EvalSymlinks(p)
			if err != nil || !strings.HasPrefix(target, dir+"/") {
				t.Errorf("%s is a symlink out of %s (to %q, %v)", p, dir, target, err)
			}
			return nil
		case !d.Type().IsRegular():
			return nil
		}
		var data []byte
		if d.Name() == bundle.CoreFile {
			data, err = exec.Command("zstd", "-d", "-c", p).Output()
		} else {
			data, err = os.ReadFile(p)
		}
		if err != nil {
			t.Errorf("read %s: %v", p, err)
		} else if bytes.Contains(data, []byte(marker)) {
			t.Errorf("%s holds the host's secret", p)
		}
		return nil
	})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestHostileSymbolTables crashes a program whose own executable carries a
// symbol table crafted to exhaust whoever reads it (a 16 KiB zstd table
// that inflates to 512 MiB, a 1 MiB zlib one that inflates to 1 GiB, one
// whose every name is 512 KiB long): the helper still stores the whole
// core, the crashing frame is unnamed, and analysis.warnings says why.
func TestHostileSymbolTables(t *testing.T) {
	// One build-id and signature for the three: keep every core.
	n := harness.Install(t, "dedup:\n  window: \"0\"\n")
	signals, err := os.ReadFile(buildSignals(t, n.Dir))
	if err != nil {
		t.Fatal(err)
	}
	for name, kind := range map[string]hostile.Symbols{"zstd-bomb": hostile.ZstdBomb, "zlib-bomb": hostile.ZlibBomb, "long-names": hostile.LongNames} {
		data, err := hostile.WithSymbols(signals, kind)
		if err != nil {
			t.Fatal(err)
		}
		exe := filepath.Join(n.Dir, name)
		if err := os.WriteFile(exe, data, 0o755); err != nil {
			t.Fatal(err)
		}
		m := collectCrash(t, n, exec.Command(exe, "segv"), nil)
		checkWholeCore(t, m)
		if len(m.Backtrace) == 0 || m.Backtrace[0].Module != name || m.Backtrace[0].Function != "" || m.Backtrace[0].BuildID == "" {
			t.Errorf("%s: backtrace %+v, want frame 0 unnamed in %s, with its build-id", name, m.Backtrace, name)
		}
		if m.Analysis == nil || len(m.Analysis.Warnings) == 0 || !strings.Contains(m.Analysis.Warnings[0], "symbols of "+exe) ||
			!strings.Contains(m.Analysis.Warnings[0], "over the analysis limits") {
			t.Errorf("%s: analysis %+v, want a warning that %s is over the analysis limits", name, m.Analysis, exe)
		}
		t.Logf("%s (%d bytes): %q; helper peak RSS %.1f MiB; %q", name, len(data), m.Title,
			float64(m.Collector.MaxRSSBytes)/(1<<20), m.Analysis.Warnings)
	}
}
