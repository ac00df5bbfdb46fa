package bundle

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestText(t *testing.T) {
	for _, tc := range []struct {
		raw      string
		want     string
		keepsRaw bool
	}{
		{"bash", "bash", false},
		{"", "", false},
		{"日本語", "日本語", false},
		{"a\xffb", "a\ufffdb", true},
		{"\xc3", "\ufffd", true}, // a truncated two-byte sequence
	} {
		text, raw := Text([]byte(tc.raw))
		if text != tc.want || !utf8.ValidString(text) {
			t.Errorf("Text(%q) renders %q, want %q", tc.raw, text, tc.want)
		}
		if tc.keepsRaw != (raw != nil) || (raw != nil && !bytes.Equal(raw, []byte(tc.raw))) {
			t.Errorf("Text(%q) keeps raw %q, want it kept: %v", tc.raw, raw, tc.keepsRaw)
		}
	}
	// The raw copy must not alias the caller's buffer.
	in := []byte("\xff")
	_, raw := Text(in)
	in[0] = 'x'
	if raw[0] != 0xff {
		t.Error("Text's raw copy aliases its input")
	}
}

func sampleMetadata() *Metadata {
	comm, commRaw := Text([]byte("bad\xffname"))
	return &Metadata{
		Schema: Schema, ID: "20240229-173045-bad_name-abcdef",
		Time: time.Date(2024, 2, 29, 17, 30, 45, 0, time.UTC), Node: "node-1",
		PID: 4242, NSPID: 7, TID: 4243, Comm: comm, CommRaw: commRaw,
		Exe: "/usr/bin/bad", Cmdline: []string{"bad", "--flag", ""},
		UID: 1000, GID: 1000, Signal: 11, SignalName: "SIGSEGV", Dumpable: 1,
		Cgroup: "/kubepods/pod1/c1",
		Core: Core{RawBytes: 1 << 20, KeptBytes: 1 << 19, ExpectedBytes: 1 << 20, StoredBytes: 4096,
			Compression: "zstd", Truncated: true, TruncateReason: ReasonMaxCoreBytes, RlimitCore: -1},
		Files: []File{
			{Path: "/usr/bin/bad", Size: 10, BuildID: "abcd", SHA256: "00", Role: "exe", Stored: "sysroot/usr/bin/bad"},
			{Path: "/usr/lib/libc.so.6", Role: "mapped", Aliases: []string{"/lib/libc.so.6"}, Skipped: "too big"},
		},
		Collector: Collector{Version: "dev", DurationSeconds: 1.5, HeldSeconds: 0.25, MaxRSSBytes: 1 << 24, DiskWriteBytes: 4096},
		Warnings:  []string{"read environ: permission denied"},
	}
}

func TestEncodeDecode(t *testing.T) {
	m := sampleMetadata()
	data, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(data, []byte("}\n")) || !bytes.Contains(data, []byte("\n  \"schema\": 1,")) {
		t.Errorf("Encode is not indented JSON ending in a newline:\n%s", data)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("round trip changed the metadata:\n got %+v\nwant %+v", got, m)
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct{ doc, mention string }{
		{`{"schema": 2, "id": "x"}`, "upgrade corecatch"},
		{`{"schema": 1,`, MetadataFile},
		{`[]`, MetadataFile},
	} {
		if _, err := Decode([]byte(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("Decode(%s) = %v, want an error mentioning %q", tc.doc, err, tc.mention)
		}
	}
}

// FuzzReadMetadata: whatever bytes a bucket's metadata.json holds,
// ReadMetadata never panics, and what it accepts names the bundle it was
// read for and renders back. `go test -fuzz FuzzReadMetadata` explores
// further than the seeds.
func FuzzReadMetadata(f *testing.F) {
	id := "20240227-100000-crasher-a58c4c"
	for _, seed := range []string{`{"schema":1,"id":"` + id + `"}`, `{"schema":1,"id":"x"}`, `null`, `[]`, `{"id":"` + id + `","core":{"raw_bytes":-1}}`,
		`{"schema":1,"id":"` + id + `","files":[{"path":"\u0000"}],"dedup":{"of":"../x"}}`, "\xff\xfe", `{"schema":1e400}`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ReadMetadata(id, bytes.NewReader(data))
		if err != nil {
			return
		}
		if m.ID != id {
			t.Fatalf("accepted metadata naming %q for %s", m.ID, id)
		}
		if _, err := Encode(m); err != nil {
			t.Fatalf("accepted metadata does not encode: %v", err)
		}
	})
}
