package cli

import (
	"fmt"
	"strings"

	"al.essio.dev/pkg/shellescape"
)

// shellQuote renders args as a command line an SRE can paste into a POSIX
// shell: each word quoted where it needs it. Bundle paths come from the
// crashed container, so a word with bytes a terminal would act on
// (escapes, newlines, invalid UTF-8) is written in bash's $'...' form,
// with those bytes as \xNN, and never printed raw.
func shellQuote(args ...string) string {
	words := make([]string, len(args))
	for i, a := range args {
		words[i] = shellescape.Quote(a)
		if printable(a) != a {
			words[i] = ansiC(a)
		}
	}
	return strings.Join(words, " ")
}

// ansiC quotes s as bash's $'...', escaping every byte that is not
// printable ASCII.
func ansiC(s string) string {
	var b strings.Builder
	b.WriteString("$'")
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\'' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c >= 0x20 && c < 0x7f:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "\\x%02x", c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}
