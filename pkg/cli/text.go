package cli

import (
	"bufio"
	"fmt"
	"io"
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
	plain := true
	for i := 0; i < len(s) && plain; i++ {
		plain = s[i] >= 0x20 && s[i] < 0x7f
	}
	if plain {
		return s
	}
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

// printableLines is printable for multi-line messages (joined errors):
// each line is escaped, the line breaks between them kept.
func printableLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = printable(l)
	}
	return strings.Join(lines, "\n")
}

// table aligns rows in columns two spaces apart, as text/tabwriter does,
// in two passes over the cells: tabwriter's work per cell made an ls of
// 100,000 bundles take a second more.
type table struct {
	rows   [][]string
	widths []int
}

// add appends a row; cells must be printable already.
func (t *table) add(cells ...string) {
	for i, c := range cells {
		if i == len(t.widths) {
			t.widths = append(t.widths, 0)
		}
		t.widths[i] = max(t.widths[i], utf8.RuneCountInString(c))
	}
	t.rows = append(t.rows, cells)
}

// write prints the rows, the last column unpadded.
func (t *table) write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	for _, row := range t.rows {
		for i, c := range row {
			bw.WriteString(c)
			if i < len(row)-1 {
				for range t.widths[i] - utf8.RuneCountInString(c) + 2 {
					bw.WriteByte(' ')
				}
			}
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}
