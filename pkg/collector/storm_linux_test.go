package collector

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestReadHeadNonBlocking: a non-blocking pipe that has nothing yet makes
// os.File.Read return EAGAIN wrapped in a *PathError; readHead waits for
// the core instead of failing on it.
func TestReadHeadNonBlocking(t *testing.T) {
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r, w := os.NewFile(uintptr(fds[0]), "core"), os.NewFile(uintptr(fds[1]), "kernel")
	// Made non-blocking behind os.File's back (which polls only the
	// descriptors it found non-blocking), as a shared pipe may be.
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	core := syntheticCore(1 << 20)
	go func() {
		time.Sleep(50 * time.Millisecond)
		w.Write(core[:64<<10])
		w.Close()
	}()
	head, _, err := readHead(&stallReader{f: r})
	if errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("readHead gave up on EAGAIN: %v", err)
	}
	if len(head) == 0 {
		t.Fatalf("readHead read nothing (err %v)", err)
	}
}
