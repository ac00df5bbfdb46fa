package analysis

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// SignatureFrames is how many frames, after normalisation, identify a bug
// (ABRT uses three, apport five).
const SignatureFrames = 3

// noise tells frames that say how a program died, not where: abort and
// raise, assertion and fortify reporting, the C library's internal
// aliases, the Go runtime and the JVM's error reporting. ABRT and apport
// drop the same before hashing.
func noise(f bundle.Frame) bool {
	fn := f.Function
	switch {
	case fn == "":
		return false
	case strings.HasPrefix(fn, "__GI_"), strings.HasPrefix(fn, "__libc_"), strings.HasPrefix(fn, "__pthread_kill"),
		strings.HasPrefix(fn, "__assert"), strings.HasPrefix(fn, "__fortify"), strings.HasPrefix(fn, "__stack_chk"),
		strings.HasPrefix(fn, "runtime."), strings.HasPrefix(fn, "os::"), strings.HasPrefix(fn, "VMError::"):
		return true
	}
	switch fn {
	case "abort", "raise", "pthread_kill", "gsignal", "__chk_fail", "_start", "__restore_rt", "killpg", "kill":
		return true
	}
	return false
}

// Normalize drops the frames that say how a program died and keeps the
// ones that say where. When every frame is noise (a Go program whose
// stack the walk could not follow past its runtime), it keeps them all.
func Normalize(frames []bundle.Frame) []bundle.Frame {
	// A signal handler that re-raised (Go's runtime, crash reporters) put
	// its own frames and the kernel's signal frame above the fault: what
	// lies inside the last signal trampoline is how it died.
	rest := frames
	for i, f := range frames {
		if strings.HasPrefix(f.Function, "runtime.sigtramp") || f.Function == "__restore_rt" {
			rest = frames[i+1:]
			if len(rest) > 0 && rest[0].Function == "" {
				rest = rest[1:] // the signal frame's return address
			}
		}
	}
	var out []bundle.Frame
	for i, f := range rest {
		if i > 0 && f.Module == "" {
			// An address in no mapped file: the walk left the stack's
			// frames (code without frame pointers below), and what
			// follows is noise that would differ from crash to crash.
			break
		}
		if !noise(f) {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return frames
	}
	return out
}

// Title names a crash in one line: "SIGSEGV in parse_header (libfoo.so)".
func Title(signal string, frames []bundle.Frame) string {
	n := Normalize(frames)
	if len(n) == 0 {
		return signal
	}
	f := n[0]
	switch {
	case f.Function != "" && f.Module != "":
		return fmt.Sprintf("%s in %s (%s)", signal, f.Function, f.Module)
	case f.Module != "":
		return fmt.Sprintf("%s in %s+0x%x", signal, f.Module, f.Offset)
	}
	return fmt.Sprintf("%s at 0x%x", signal, f.Offset)
}

// Signature identifies a bug: the executable (its build-id, or its name),
// the signal, and the top normalised frames, each by function or, without
// a symbol, by module build-id (or name) and offset. Addresses never enter
// it, so ASLR does not split one bug into many.
func Signature(exeID, signal string, frames []bundle.Frame) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s", exeID, signal)
	for i, f := range Normalize(frames) {
		if i == SignatureFrames {
			break
		}
		switch {
		case f.Function != "":
			fmt.Fprintf(h, "\x00%s", f.Function)
		case f.BuildID != "":
			fmt.Fprintf(h, "\x00%s+0x%x", f.BuildID, f.Offset)
		default:
			fmt.Fprintf(h, "\x00%s+0x%x", f.Module, f.Offset)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}
