package bundle

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// hostileNames are process names a crasher can choose (prctl PR_SET_NAME,
// exec of any file name): none may turn into a path that leaves its place.
var hostileNames = []string{
	"", "bash", "my prog", "a/b", "../../etc", "..", ".", ".hidden",
	"line\nbreak", "\xff\xfe\x80", "tab\there", "nul\x00byte",
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "----------------", "...............",
	"日本語のプロセス名", "/", "-rf", "%s%n",
}

var safeNameShape = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}$`)

func TestSafeName(t *testing.T) {
	for _, name := range hostileNames {
		got := SafeName([]byte(name))
		if !safeNameShape.MatchString(got) {
			t.Errorf("SafeName(%q) = %q: not a short, safe, dot-free-leading name", name, got)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"bash", "bash"},
		{"", "unknown"},
		{"..", "_."},
		{".hidden", "_hidden"},
		{"my prog", "my_prog"},
		{"a/b", "a_b"},
		{"line\nbreak", "line_break"},
		{"\xff\xfe", "__"},
		{"abcdefghijklmnopqrst", "abcdefghijklmno"},
		{"libc.so.6", "libc.so.6"},
	} {
		if got := SafeName([]byte(tc.in)); got != tc.want {
			t.Errorf("SafeName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestNewID(t *testing.T) {
	// A zone east of UTC whose local date differs from the UTC date: ids
	// and their directories must follow UTC.
	zone := time.FixedZone("UTC+9", 9*3600)
	when := time.Date(2024, 3, 1, 2, 30, 45, 999_000_000, zone) // 2024-02-29 17:30:45 UTC
	seen := map[string]bool{}
	for _, name := range hostileNames {
		id := NewID(when, []byte(name))
		if err := ValidID(id); err != nil {
			t.Fatalf("NewID(%q) = %q: %v", name, id, err)
		}
		if strings.ContainsAny(id, "/\n\x00") || strings.HasPrefix(id, ".") {
			t.Fatalf("NewID(%q) = %q is not one safe path component", name, id)
		}
		if seen[id] {
			t.Fatalf("NewID made %q twice", id)
		}
		seen[id] = true
		dir, err := Dir(id)
		if err != nil || dir != "2024/02/29/"+id {
			t.Fatalf("Dir(%q) = %q, %v; want 2024/02/29/%s", id, dir, err, id)
		}
		got, err := IDTime(id)
		if err != nil || !got.Equal(when.Truncate(time.Second)) || got.Location() != time.UTC {
			t.Fatalf("IDTime(%q) = %v, %v; want %v in UTC", id, got, err, when.UTC().Truncate(time.Second))
		}
	}
}

func TestValidIDRejects(t *testing.T) {
	for _, id := range []string{
		"",
		"../x",
		"20240229-173045-bash-abcdef/..",
		"20240229-173045-bash-ABCDEF", // upper-case random part
		"20240229-173045-bash-abcde",  // short random part
		"20240229-173045--abcdef",     // empty name
		"20240229-173045-abcdefghijklmnop-abcdef", // 16-byte name
		"20240229-173045-a/b-abcdef",
		"2024029-173045-bash-abcdef",
		" 20240229-173045-bash-abcdef",
		"20240229-173045-bash-abcdef\n",
	} {
		if ValidID(id) == nil {
			t.Errorf("ValidID(%q) accepted it", id)
		}
		if _, err := Dir(id); err == nil {
			t.Errorf("Dir(%q) accepted it", id)
		}
		if _, err := IDTime(id); err == nil {
			t.Errorf("IDTime(%q) accepted it", id)
		}
	}
	if err := ValidID("../x"); err == nil || !strings.Contains(err.Error(), "corecatch ls") {
		t.Errorf("ValidID error %v does not tell the user how to find ids", err)
	}
}

func TestSysrootName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/usr/lib/libc.so.6", "sysroot/usr/lib/libc.so.6"},
		{"../../etc/passwd", "sysroot/etc/passwd"},
		{"/a/../../b", "sysroot/b"},
		{"//x", "sysroot/x"},
		{"/lib/./x/../y", "sysroot/lib/y"},
		{"relative/name", "sysroot/relative/name"},
		{"/..", ""},
		{"", ""},
		{"/", ""},
		{"/a\x00b", ""},
	} {
		got, err := SysrootName(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("SysrootName(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("SysrootName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestValidIDMatchesPattern checks the hand-written id check against the
// pattern it implements, on ids and near misses.
func TestValidIDMatchesPattern(t *testing.T) {
	pattern := regexp.MustCompile(`^(\d{8})-(\d{6})-([A-Za-z0-9_.-]{1,15})-([0-9a-f]{6})$`)
	good := NewID(time.Now(), []byte("some-name.x"))
	cases := []string{good, "", "x", "20240227-100000-a-abcdef", "20240227-100000--abcdef", "20240227-100000-a-b-c-abcdef",
		"20240227-100000-0123456789abcdef-abcdef", "20240227-100000-0123456789abcde-abcdef", "20240227-100000-a-ABCDEF",
		"2024022a-100000-a-abcdef", "20240227_100000-a-abcdef", "20240227-100000-a/b-abcdef", "20240227-100000-a-abcde",
		"20240227-100000-a-abcdeff", "20240227-1000000-a-abcdef", "20240227-100000-\xff-abcdef", "20240227-100000-a -abcdef"}
	for i := range len(good) {
		for _, c := range []byte{'-', '0', 'a', 'F', '/', '.', 0} {
			b := []byte(good)
			b[i] = c
			cases = append(cases, string(b))
		}
	}
	for _, id := range cases {
		if got, want := ValidID(id) == nil, pattern.MatchString(id); got != want {
			t.Errorf("ValidID(%q) = %v, the pattern says %v", id, got, want)
		}
	}
}
