package analysis

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/proc"
)

// TestQueryMappings: the kernel's answers to PROCMAP_QUERY are the
// mappings the text of /proc/PID/maps gives, for this test's code, a
// deleted file whose name holds a newline, and addresses no file maps.
func TestQueryMappings(t *testing.T) {
	odd := filepath.Join(t.TempDir(), "odd\nname")
	if err := os.WriteFile(odd, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(odd)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 8192, unix.PROT_READ, unix.MAP_PRIVATE)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	os.Remove(odd)
	text := uint64(reflect.ValueOf(TestQueryMappings).Pointer())
	file := uint64(uintptr(unsafe.Pointer(&mem[100])))
	heap := uint64(uintptr(unsafe.Pointer(new([1 << 16]byte))))
	addrs := []uint64{text, text - 1, file, heap, 0}

	data, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	var want []Mapping
	for _, a := range addrs {
		if _, dup := findMapping(want, a); dup {
			continue
		}
		if m, ok := findMapping(ParseMaps(data), a); ok {
			want = append(want, m)
		}
	}
	if len(want) != 2 {
		t.Fatalf("maps gives %+v for the test's code and file, want two mappings", want)
	}
	maps, err := proc.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	got, ok := queryMappings(maps, addrs)
	if !ok {
		t.Skip("this kernel does not answer PROCMAP_QUERY (Linux 6.11+)")
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("PROCMAP_QUERY gives %+v, maps %+v", got, want)
	}
	all, err := liveMappings("/proc/self", addrs)
	if err != nil || !reflect.DeepEqual(all, want) {
		t.Errorf("liveMappings = %+v, %v; want %+v", all, err, want)
	}
}
