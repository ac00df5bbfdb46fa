package analysis

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// Clues is what a crashed process's runtime wrote about its crash besides
// the core, as far as the bundle holds it: the JVM's fatal error log, and
// the end of the process's log (the container's log, in the CRI's format,
// or its standard error's file), where Rust's panic hook and Node.js
// write.
type Clues struct {
	HsErr []byte
	Log   []byte
}

// BundleClues reads the clues a bundle materialized in dir holds.
func BundleClues(dir string, m *bundle.Metadata) Clues {
	var c Clues
	c.Log, _ = os.ReadFile(filepath.Join(dir, bundle.ContainerLog))
	if len(c.Log) == 0 {
		c.Log, _ = os.ReadFile(filepath.Join(dir, bundle.StderrLog))
	}
	if m.NSPID > 0 {
		c.HsErr, _ = os.ReadFile(filepath.Join(dir, bundle.HsErrLog(m.NSPID)))
	}
	return c
}

// Script returns the interpreted program's stack that the runtime wrote
// of its crash: a JVM's Java frames from its error log, or the JavaScript
// stack Node.js printed to the log.
func Script(c Clues) []bundle.Frame {
	if h, ok := ParseHsErr(c.HsErr); ok {
		return h.Frames
	}
	return NodeStack(LogText(c.Log))
}

// maxMessage bounds the panic message a title carries.
const maxMessage = 160

// Describe titles a crash as its developer knows it: a JVM's by its
// error log (the signal it caught and the Java method), a Node.js
// program's by the top frame of the JavaScript stack it printed, a Rust
// panic's by the panicking function and its message; any other by the
// frames (Title).
func Describe(signal string, frames []bundle.Frame, c Clues) string {
	if h, ok := ParseHsErr(c.HsErr); ok {
		return h.Title(signal)
	}
	log := LogText(c.Log)
	if js := NodeStack(log); len(js) > 0 {
		return nodeTitle(signal, js)
	}
	title := Title(signal, frames)
	if _, panicked := normalize(frames); panicked {
		if msg := RustPanicMessage(log); msg != "" {
			if len(msg) > maxMessage {
				msg = msg[:maxMessage]
				for !utf8.ValidString(msg) {
					msg = msg[:len(msg)-1]
				}
				msg += "…"
			}
			title += ": " + msg
		}
	}
	return title
}

// criLine matches a line of a CRI container log: "<RFC 3339 time>
// <stdout|stderr> <F|P> <text>", P marking a line the runtime split.
var criLine = regexp.MustCompile(`^\S+ (?:stdout|stderr) ([FP]) ?(.*)$`)

// LogText returns a log's text: a CRI log's lines without their time,
// stream and tag, split lines joined; any other log as it is.
func LogText(log []byte) string {
	lines := strings.Split(string(log), "\n")
	if len(lines) == 0 || !criLine.MatchString(lines[0]) && (len(lines) < 2 || !criLine.MatchString(lines[1])) {
		return string(log)
	}
	var b bytes.Buffer
	for _, l := range lines {
		m := criLine.FindStringSubmatch(l)
		if m == nil {
			continue // the tail's first line, cut in the middle
		}
		b.WriteString(m[2])
		if m[1] == "F" {
			b.WriteByte('\n')
		}
	}
	return b.String()
}
