package cli

import "testing"

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"\x1b[2J\x1b]0;owned\a": `\x1b[2J\x1b]0;owned\a`,
		"a\nb\tc\r":             `a\nb\tc\r`,
		"\xff\xfe":              `\xff\xfe`,
		"evil\u202etxt.exe":     `evil\u202etxt.exe`,
		"日本 \"quoted\" C:\\x":   "日本 \"quoted\" C:\\x",
		"\x00\x7f\u0085":        `\x00\x7f\u0085`,
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %s, want %s", in, got, want)
		}
	}
	if got := printableLines("line \x1b1\nline 2"); got != "line \\x1b1\nline 2" {
		t.Errorf("printableText kept %q", got)
	}
}
