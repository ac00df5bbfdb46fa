package proc

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadFile: a /proc file reads as os.ReadFile reads it, also one
// longer than the first read's buffer, and a missing file is
// fs.ErrNotExist.
func TestReadFile(t *testing.T) {
	for _, name := range []string{"/proc/self/status", "/proc/self/limits"} {
		got, err := ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(name)
		if first := func(b []byte) string { return string(bytes.SplitN(b, []byte("\n"), 2)[0]) }; first(got) != first(want) {
			t.Errorf("%s starts %q, want %q", name, first(got), first(want))
		}
	}
	long := filepath.Join(t.TempDir(), "long")
	data := []byte(strings.Repeat("0123456789abcdef", 3*firstRead/16+5))
	if err := os.WriteFile(long, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadFile(long); err != nil || !bytes.Equal(got, data) {
		t.Errorf("read %d bytes (%v), want %d", len(got), err, len(data))
	}
	if _, err := ReadFile("/proc/self/no-such-file"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file gave %v, want fs.ErrNotExist", err)
	}
}

// TestOpen: a /proc file opens for reading, and a missing one is
// fs.ErrNotExist.
func TestOpen(t *testing.T) {
	f, err := Open("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err != nil || string(magic[:]) != "\x7fELF" {
		t.Errorf("read %q (%v) from /proc/self/exe, want an ELF header", magic, err)
	}
	if _, err := Open("/proc/self/no-such-file"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file gave %v, want fs.ErrNotExist", err)
	}
}
