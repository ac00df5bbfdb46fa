package collector

import (
	"fmt"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// addressSpaceSlack is the address space the Go runtime reserves beyond
// what it uses: a Go program that allocates nothing already maps 1.2 GB
// (arena index, page-allocator summaries), and helpers at work (the e2e
// crashes, gdb-analysed and hostile ones) peaked at VmPeak 1.58-1.72 GB
// with 20-36 MiB resident (linux/amd64, Go 1.26). RLIMIT_AS is the memory
// limit plus this: 0.3 GB over the highest peak before the heap grows.
const addressSpaceSlack = 2 << 30

// LimitMemory bounds the helper, which reads files a crashed container
// controls while the kernel holds the crasher: the Go runtime's soft limit
// makes the collector work harder to stay under limit, and RLIMIT_AS (limit
// plus what the runtime reserves) stops it before it can take the node's
// memory. The readers have caps of their own; these are the backstop.
// limit <= 0 leaves the helper unbounded.
func LimitMemory(limit int64) error {
	if limit <= 0 {
		return nil
	}
	debug.SetMemoryLimit(limit)
	as := uint64(limit) + addressSpaceSlack
	if err := unix.Setrlimit(unix.RLIMIT_AS, &unix.Rlimit{Cur: as, Max: as}); err != nil {
		return fmt.Errorf("set RLIMIT_AS to %d bytes (collect.memory_limit plus the Go runtime's reservations): %w", as, err)
	}
	return nil
}
