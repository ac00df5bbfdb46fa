package analysis

import (
	"bufio"
	"bytes"
	"regexp"
	"strconv"
	"strings"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// hsErrFrame matches the JVM's "# C  [libfoo.so+0x1c40]  parse_header+0x10"
// (C: native code, V: the JVM itself, J/j: Java code, which has no module).
var hsErrFrame = regexp.MustCompile(`^#\s+[CVjJv]\s+(?:\[([^\]+]+)\+0x([0-9a-f]+)\])?\s*(.*)$`)

// HsErrFrame reads the "Problematic frame" of a JVM's fatal error log: the
// JVM catches the fault itself and aborts afterwards, so the core's own
// stack shows only its error reporting, and this line is where the crash
// was.
func HsErrFrame(log []byte) (bundle.Frame, bool) {
	sc := bufio.NewScanner(bytes.NewReader(log))
	for sc.Scan() {
		if !strings.HasPrefix(sc.Text(), "# Problematic frame:") || !sc.Scan() {
			continue
		}
		m := hsErrFrame.FindStringSubmatch(sc.Text())
		if m == nil {
			return bundle.Frame{}, false
		}
		off, _ := strconv.ParseUint(m[2], 16, 64)
		fn := strings.TrimSpace(m[3])
		if i := strings.LastIndex(fn, "+0x"); i > 0 {
			fn = fn[:i]
		}
		return bundle.Frame{Module: m[1], Offset: off, Function: fn}, true
	}
	return bundle.Frame{}, false
}
