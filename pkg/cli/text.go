package cli

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// printable renders text that may hold bytes a crashed container chose
// (names, paths, pod and node fields of metadata) on one line of a
// terminal: control characters, terminal escapes, invalid UTF-8 and
// invisible format characters become Go escapes (\x1b, \n, \u202e), as
// strconv.Quote writes them; everything printable, quotes included, is
// left as it is so that messages stay readable.
func printable(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsPrint(r):
			b.WriteString(s[i : i+n])
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

// printableText is printable for multi-line messages (joined errors): each
// line is escaped, the line breaks between them kept.
func printableText(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = printable(l)
	}
	return strings.Join(lines, "\n")
}
