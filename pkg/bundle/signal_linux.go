package bundle

import (
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// SignalName returns the kernel's name for a signal number ("SIGSEGV"), or
// "SIG<n>" for numbers without one (real-time signals).
func SignalName(sig int) string {
	if name := unix.SignalName(syscall.Signal(sig)); name != "" {
		return name
	}
	return "SIG" + strconv.Itoa(sig)
}
