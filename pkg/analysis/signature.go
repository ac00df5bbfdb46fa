package analysis

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/ianlancetaylor/demangle"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// SignatureFrames is how many frames, after normalisation, identify a bug
// (ABRT uses three, apport five).
const SignatureFrames = 3

// noise tells frames that say how a program died, not where: abort and
// raise, assertion and fortify reporting, the C library's internal
// aliases, the Go runtime, Rust's abort and the JVM's error reporting.
// ABRT and apport drop the same before hashing.
func noise(f bundle.Frame) bool {
	fn := f.Function
	switch {
	case fn == "":
		return false
	case rustGlue(fn):
		return true
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
// ones that say where, with mangled names (C++, Rust) demangled. When
// every frame is noise (a Go program whose stack the walk could not follow
// past its runtime), it keeps them all.
func Normalize(frames []bundle.Frame) []bundle.Frame {
	out, _ := normalize(frames)
	return out
}

// normalize is Normalize, and says whether the frames are a Rust panic's.
func normalize(frames []bundle.Frame) ([]bundle.Frame, bool) {
	frames = demangled(frames)
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
	panicked := false
	for i, f := range rest {
		if i > 0 && f.Module == "" {
			// An address in no mapped file: the walk left the stack's
			// frames (code without frame pointers below), and what
			// follows is noise that would differ from crash to crash.
			break
		}
		switch {
		case rustGlue(f.Function):
		case len(out) == 0 && rustPanicking(f.Function):
			// Rust's panic machinery, and the library helpers that
			// panicked for their caller (unwrap, expect, bounds).
			panicked = true
		case panicked && len(out) == 0 && rustLibrary(f.Function):
		case !noise(f):
			out = append(out, f)
		}
	}
	if len(out) > 1 && libcString(out[0]) && !libc(out[1].Module) {
		// strlen or memcpy given a bad pointer: the bug is its caller's.
		out = out[1:]
	}
	if len(out) == 0 {
		return frames, panicked
	}
	return out, panicked
}

// demangled returns frames with C++ and Rust symbol names demangled (as
// gdb shows them), so that the helper's walk, which reads raw symbol
// tables, and gdb's unwind name a function alike.
func demangled(frames []bundle.Frame) []bundle.Frame {
	var out []bundle.Frame
	for i, f := range frames {
		if strings.HasPrefix(f.Function, "_Z") || strings.HasPrefix(f.Function, "_R") {
			if out == nil {
				out = slices.Clone(frames)
			}
			out[i].Function = demangle.Filter(f.Function)
		}
	}
	if out == nil {
		return frames
	}
	return out
}

// libc tells the C library's own module.
func libc(module string) bool {
	return strings.HasPrefix(module, "libc.so") || strings.HasPrefix(module, "libc-")
}

// libcString tells the C library's string and memory functions
// (__strlen_avx2, __memmove_avx_unaligned_erms, strcmp...): they fault on
// the pointer their caller gave them.
func libcString(f bundle.Frame) bool {
	if !libc(f.Module) {
		return false
	}
	fn := strings.TrimLeft(f.Function, "_")
	for _, p := range []string{"str", "mem", "rawmem", "stp", "wcs", "wmem"} {
		if strings.HasPrefix(fn, p) {
			return true
		}
	}
	return false
}

// Title names a crash in one line: "SIGSEGV in parse_header (libfoo.so)";
// a Rust panic's is "panic in main::parse (app)".
func Title(signal string, frames []bundle.Frame) string {
	n, panicked := normalize(frames)
	if len(n) == 0 {
		return signal
	}
	if panicked {
		signal = "panic"
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
