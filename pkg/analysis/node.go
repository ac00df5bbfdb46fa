package analysis

import (
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// nodeStackHeader starts the JavaScript stack Node.js prints to stderr
// when it aborts (process.abort(), a failed internal check) or dies of a
// fatal V8 error.
const nodeStackHeader = "----- JavaScript stack trace -----"

// nodeFrame matches one of its frames: "1: parseHeader (/app/crash.js:2:29)"
// or, for code outside any function, "3: /app/crash.js:6:1".
var nodeFrame = regexp.MustCompile(`^\s*\d+: (?:(.+?) \((.+):(\d+):\d+\)|(.+):(\d+):\d+)$`)

// NodeStack returns the top frame of the last JavaScript stack Node.js
// printed in log that is not Node's own (node:internal/...): its function
// (or "<anonymous>"), the file's base name and line as module, the whole
// path as file.
func NodeStack(log string) (bundle.Frame, bool) {
	i := strings.LastIndex(log, nodeStackHeader)
	if i < 0 {
		return bundle.Frame{}, false
	}
	var first *bundle.Frame
	started := false
	for _, line := range strings.Split(log[i+len(nodeStackHeader):], "\n") {
		m := nodeFrame.FindStringSubmatch(line)
		if m == nil {
			if started {
				break
			}
			continue
		}
		started = true
		f := bundle.Frame{Function: m[1], File: m[2]}
		f.Line, _ = strconv.Atoi(m[3])
		if m[4] != "" {
			f = bundle.Frame{Function: "<anonymous>", File: m[4]}
			f.Line, _ = strconv.Atoi(m[5])
		}
		f.Module = path.Base(f.File) + ":" + strconv.Itoa(f.Line)
		if first == nil {
			first = &f
		}
		if !strings.HasPrefix(f.File, "node:") {
			return f, true
		}
	}
	if first == nil {
		return bundle.Frame{}, false
	}
	return *first, true
}
