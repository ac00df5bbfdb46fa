package analysis

import (
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/proc"
)

// procmapQuery is struct procmap_query (include/uapi/linux/fs.h, Linux
// 6.11): the query of /proc/PID/maps for the one mapping that holds an
// address.
type procmapQuery struct {
	Size, QueryFlags, QueryAddr                 uint64
	VMAStart, VMAEnd, VMAFlags, VMAPageSize     uint64
	VMAOffset, Inode                            uint64
	DevMajor, DevMinor, VMANameSize, BuildIDLen uint32
	VMANameAddr, BuildIDAddr                    uint64
}

// PROCMAP_QUERY, _IOWR('f', 17, struct procmap_query), and its flag for
// mappings of files.
const (
	procmapQueryIoctl = 0xC0686611
	procmapFileBacked = 0x20
)

// liveMappings returns the mappings of files that hold addrs in a live
// process (dir its /proc directory). PROCMAP_QUERY asks the kernel for the
// mapping of each address, where the text of /proc/PID/maps has the
// kernel format every mapping of the process, path and all, while it holds
// the crash; a kernel without the query gives the text.
func liveMappings(dir string, addrs []uint64) ([]Mapping, error) {
	f, err := proc.Open(filepath.Join(dir, "maps"))
	if err != nil {
		return nil, err
	}
	m, ok := queryMappings(f, addrs)
	f.Close()
	if ok {
		return m, nil
	}
	data, err := proc.ReadFile(filepath.Join(dir, "maps"))
	if err != nil {
		return nil, err
	}
	return ParseMaps(data), nil
}

// queryMappings asks maps, an open /proc/PID/maps, for the file mapping of
// each address, as ParseMaps would give it: its path as the text writes
// it (a newline as \012, " (deleted)" cut), only paths of files. ok is
// false when the kernel does not answer the query.
func queryMappings(maps *os.File, addrs []uint64) (out []Mapping, ok bool) {
	rc, err := maps.SyscallConn()
	if err != nil {
		return nil, false
	}
	name := make([]byte, unix.PathMax)
	ok = true
	rc.Control(func(fd uintptr) {
		for _, a := range addrs {
			if _, found := findMapping(out, a); found {
				continue
			}
			q := procmapQuery{QueryFlags: procmapFileBacked, QueryAddr: a,
				VMANameSize: uint32(len(name)), VMANameAddr: uint64(uintptr(unsafe.Pointer(&name[0])))}
			q.Size = uint64(unsafe.Sizeof(q))
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, procmapQueryIoctl, uintptr(unsafe.Pointer(&q)))
			switch {
			case errno == unix.ENOENT:
				continue // no file mapped there
			case errno != 0:
				ok = false
				return
			}
			if q.VMANameSize == 0 {
				continue
			}
			p := strings.TrimSuffix(string(name[:q.VMANameSize-1]), " (deleted)")
			if !strings.HasPrefix(p, "/") {
				continue
			}
			out = append(out, Mapping{Start: q.VMAStart, End: q.VMAEnd, Offset: q.VMAOffset,
				Path: strings.ReplaceAll(p, "\n", `\012`)})
		}
	})
	return out, ok
}
