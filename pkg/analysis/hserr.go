package analysis

import (
	"bufio"
	"bytes"
	"regexp"
	"strconv"
	"strings"

	"github.com/corecatch/corecatch/pkg/bundle"
)

var (
	// hsErrFrame matches the JVM's "# C  [libfoo.so+0x1c40]  parse_header+0x10"
	// (C: native code, V: the JVM itself, J/j: Java code, which has no module).
	hsErrFrame = regexp.MustCompile(`^#\s+([CVjJv])\s+(?:\[([^\]+]+)\+0x([0-9a-f]+)\])?\s*(.*)$`)
	// hsErrSignal matches the signal the JVM caught: "#  SIGSEGV (0xb) at pc=0x...".
	hsErrSignal = regexp.MustCompile(`^#\s+(SIG[A-Z]+) \(0x[0-9a-f]+\)`)
	// hsErrJava matches a Java frame of the native or Java frames
	// sections: "j  Crash.store(Lsun/misc/Unsafe;)V+5" (interpreted),
	// "J 123 c2 java.lang.String.length()I java.base@17 (11 bytes) @ 0x..."
	// (compiled), with the method's module when it is one of the JDK's.
	hsErrJava = regexp.MustCompile(`^([jJ])\s+(?:\d+%?\s+(?:c[12]\s+)?)?([\w$.<>/]+)\(\S*\)\S*(?:\s+([\w.]+)@\S+)?`)
)

// HsErr is what a JVM's fatal error log (hs_err_pid<pid>.log) says of its
// crash: the JVM catches the fault itself and aborts afterwards, so the
// core's own stack shows only its error reporting.
type HsErr struct {
	// Signal is the signal the JVM caught ("SIGSEGV"), not the SIGABRT
	// it died of.
	Signal string
	// Problematic is the frame that faulted, native (with its module)
	// or Java; Native says it is C code outside the JVM, a JNI library's.
	Problematic bundle.Frame
	Native      bool
	// Java is the first Java frame of the crashed thread that is not the
	// JDK's own, the application's method that made the faulting call.
	Java string
	// Frames are the crashed thread's Java frames, innermost first
	// (module "java").
	Frames []bundle.Frame
}

// ParseHsErr reads a JVM's fatal error log; ok is false when it names no
// problematic frame.
func ParseHsErr(log []byte) (h HsErr, ok bool) {
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	section := ""
	for sc.Scan() {
		line := sc.Text()
		if m := hsErrSignal.FindStringSubmatch(line); m != nil && h.Signal == "" {
			h.Signal = m[1]
		}
		if strings.HasPrefix(line, "# Problematic frame:") && !ok && sc.Scan() {
			m := hsErrFrame.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			off, _ := strconv.ParseUint(m[3], 16, 64)
			fn := strings.TrimSpace(m[4])
			if i := strings.LastIndex(fn, "+0x"); i > 0 {
				fn = fn[:i]
			}
			h.Problematic, ok = bundle.Frame{Module: m[2], Offset: off, Function: fn}, true
			h.Native = m[1] == "C" && !strings.HasPrefix(m[2], "libjvm.so")
			continue
		}
		switch {
		case strings.HasPrefix(line, "Native frames:"), strings.HasPrefix(line, "Java frames:"):
			if len(h.Frames) == 0 { // the Java frames repeat the native ones
				section = line
			}
			continue
		case line == "":
			section = ""
		}
		if section == "" {
			continue
		}
		m := hsErrJava.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		h.Frames = append(h.Frames, bundle.Frame{Function: m[2], Module: "java"})
		// The JDK's own methods (java.base, jdk.unsupported...) carry
		// their module; the application's, on the class path, do not.
		if m[3] == "" && h.Java == "" {
			h.Java = m[2]
		}
	}
	return h, ok
}

// Title names the crash from the log: a JNI library's native frame when
// the fault was there, else the application's Java method, else the
// problematic frame; with the signal the JVM caught. signal is the one
// the core says, for a log that names none.
func (h HsErr) Title(signal string) string {
	if h.Signal != "" {
		signal = h.Signal
	}
	if h.Java != "" && !h.Native {
		return signal + " in " + h.Java + " (java)"
	}
	return Title(signal, []bundle.Frame{h.Problematic})
}
