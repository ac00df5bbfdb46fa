package cli

import (
	"os/exec"
	"testing"
)

// TestShellQuote: what pull prints is read back by a real bash as the
// very same words, hostile paths included, and holds no raw control byte.
func TestShellQuote(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash is needed to read the quoted line back")
	}
	words := []string{"gdb", "-iex", "set sysroot /tmp/out dir/sysroot",
		"/tmp/o/sysroot/app; rm -rf ~", "/x/$(id)`id`'q'\"d\"", "/x/\x1b]0;pwned\x07\n\xff", "", "plain/path-1.2"}
	line := shellQuote(words...)
	for i := 0; i < len(line); i++ {
		if c := line[i]; c < 0x20 || c == 0x7f {
			t.Fatalf("quoted line %q holds the raw byte %#x", line, c)
		}
	}
	got, err := exec.Command(bash, "-c", "f() { for w in \"$@\"; do printf '%s\\0' \"$w\"; done; }; f "+line).Output()
	if err != nil {
		t.Fatalf("bash -c %q: %v", line, err)
	}
	var want []byte
	for _, w := range words {
		want = append(append(want, w...), 0)
	}
	if string(got) != string(want) {
		t.Errorf("bash read %q back as %q, want %q", line, got, want)
	}
}
