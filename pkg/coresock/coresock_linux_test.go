package coresock

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// kernel plays the crashing task's side of the protocol: it connects,
// sends a request of reqSize bytes supporting mask, and returns the answer
// it got; it then sends mark.
func kernel(t *testing.T, path string, reqSize uint32, mask uint64, mark uint32) <-chan uint64 {
	t.Helper()
	got := make(chan uint64, 1)
	go func() {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Error(err)
			close(got)
			return
		}
		defer c.Close()
		req := make([]byte, reqSize)
		binary.NativeEndian.PutUint32(req, reqSize)
		binary.NativeEndian.PutUint32(req[4:], ackSizeVer0)
		binary.NativeEndian.PutUint64(req[8:], mask)
		c.Write(req)
		ack := make([]byte, ackSizeVer0)
		if _, err := io.ReadFull(c, ack); err != nil {
			close(got)
			return
		}
		var m [4]byte
		binary.NativeEndian.PutUint32(m[:], mark)
		c.Write(m[:])
		got <- binary.NativeEndian.Uint64(ack[8:])
		io.Copy(io.Discard, c)
	}()
	return got
}

func accept(t *testing.T, ln *net.UnixListener) *Conn {
	t.Helper()
	uc, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(uc, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestProtocol: the request is read whatever its size, the peer is this
// process (its pidfd checked), and the answer reaches the other side; an
// answer the request does not support, or a mark other than REQACK, is an
// error.
func TestProtocol(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cd.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	all := Kernel | Userspace | Reject | Wait

	got := kernel(t, path, 24, all, markReqAck)
	c := accept(t, ln)
	if c.PID != os.Getpid() || c.Request.Size != 24 || c.Request.Mask != all {
		t.Errorf("peer %d request %+v, want pid %d, 24 bytes, mask %#x", c.PID, c.Request, os.Getpid(), all)
	}
	if err := c.Answer(Kernel | Wait); err != nil {
		t.Fatal(err)
	}
	if ack := <-got; ack != Kernel|Wait {
		t.Errorf("the kernel side got %#x", ack)
	}
	c.Close()

	kernel(t, path, 16, Kernel|Reject, markReqAck)
	c = accept(t, ln)
	if err := c.Answer(Kernel | Wait); err == nil {
		t.Error("an answer the kernel does not support was sent")
	}
	c.Close()

	kernel(t, path, 16, all, 4)
	c = accept(t, ln)
	if err := c.Answer(Kernel); err == nil {
		t.Error("a refused answer (mark 4) is not an error")
	}
	c.Close()
}
