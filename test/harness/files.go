package harness

import (
	"os"
	"testing"
)

// DirBytes is the size of the files directly in dir, for tests that bound
// what a component keeps on disk.
func DirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}
