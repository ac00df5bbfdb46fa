package analysis

import (
	"fmt"
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

// NodeStack returns the last JavaScript stack Node.js printed in log,
// innermost first: each frame's function (or "<anonymous>"), file and
// line, module "javascript".
func NodeStack(log string) []bundle.Frame {
	i := strings.LastIndex(log, nodeStackHeader)
	if i < 0 {
		return nil
	}
	var frames []bundle.Frame
	for _, line := range strings.Split(log[i+len(nodeStackHeader):], "\n") {
		m := nodeFrame.FindStringSubmatch(line)
		if m == nil {
			if len(frames) > 0 {
				break
			}
			continue
		}
		f := bundle.Frame{Function: m[1], File: m[2], Module: "javascript"}
		f.Line, _ = strconv.Atoi(m[3])
		if m[4] != "" {
			f = bundle.Frame{Function: "<anonymous>", File: m[4], Module: "javascript"}
			f.Line, _ = strconv.Atoi(m[5])
		}
		frames = append(frames, f)
	}
	return frames
}

// nodeTitle names a Node.js crash by the top frame of its JavaScript
// stack that is not Node's own (node:internal/...): "parseHeader
// (app.js:4)".
func nodeTitle(signal string, frames []bundle.Frame) string {
	top := frames[0]
	for _, f := range frames {
		if !strings.HasPrefix(f.File, "node:") {
			top = f
			break
		}
	}
	return fmt.Sprintf("%s in %s (%s:%d)", signal, top.Function, path.Base(top.File), top.Line)
}
