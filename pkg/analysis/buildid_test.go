package analysis

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"regexp"
	"testing"
)

// TestBuildID compares buildID with readelf -n on real ELF files: this test
// binary (Go writes a GNU build-id note next to its own) and /bin/true.
func TestBuildID(t *testing.T) {
	readelf, err := exec.LookPath("readelf")
	if err != nil {
		t.Skip("readelf not installed (binutils)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	withID := 0
	for _, path := range []string{self, "/bin/true"} {
		out, err := exec.Command(readelf, "-n", path).Output()
		if err != nil {
			t.Logf("readelf -n %s: %v", path, err)
			continue
		}
		want := ""
		if m := regexp.MustCompile(`Build ID: ([0-9a-f]+)`).FindSubmatch(out); m != nil {
			want = string(m[1])
			withID++
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		got := BuildID(f)
		f.Close()
		if got != want {
			t.Errorf("BuildID(%s) = %q, readelf says %q", path, got, want)
		}
	}
	if withID == 0 {
		t.Error("no file with a build-id to compare against")
	}
	if got := BuildID(bytes.NewReader([]byte("#!/bin/sh\necho not ELF\n"))); got != "" {
		t.Errorf("BuildID(a script) = %q", got)
	}
}

// note encodes one ELF note with 4-byte padding.
func note(name string, typ uint32, desc []byte) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, uint32(len(name)))
	b = le.AppendUint32(b, uint32(len(desc)))
	b = le.AppendUint32(b, typ)
	pad := func(b []byte) []byte { return append(b, make([]byte, (4-len(b)%4)%4)...) }
	b = pad(append(b, name...))
	return pad(append(b, desc...))
}

// TestNoteBuildID covers notes a hostile executable may carry: the helper
// reads them as root, so malformed ones must give "" and never panic.
func TestNoteBuildID(t *testing.T) {
	id := []byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3}
	gnu := note("GNU\x00", 3, id)
	huge := binary.LittleEndian.AppendUint32(nil, 0xffffffff)
	huge = append(append(huge, gnu[4:]...), make([]byte, 16)...)
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"only the build-id", gnu, "deadbeef010203"},
		{"after another note", append(note("Go\x00\x00", 4, []byte("go build id")), gnu...), "deadbeef010203"},
		{"a GNU note of another type", note("GNU\x00", 1, id), ""},
		{"another owner with type 3", note("XYZ\x00", 3, id), ""},
		{"empty", nil, ""},
		{"cut in the header", gnu[:8], ""},
		{"cut in the descriptor", gnu[:len(gnu)-4], ""},
		{"name size overflows", huge, ""},
	} {
		if got := noteBuildID(bytes.NewReader(tc.data), binary.LittleEndian, 4); got != tc.want {
			t.Errorf("%s: noteBuildID = %q, want %q", tc.name, got, tc.want)
		}
	}
}
