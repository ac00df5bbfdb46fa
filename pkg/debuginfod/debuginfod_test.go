package debuginfod

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
)

// TestServe serves a file store's bundle: a program with DWARF by its
// build-id as executable and debuginfo, a file without DWARF as
// executable only, and 404 for the rest of the protocol.
func TestServe(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open("file://"+t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A program with DWARF (go test links its binaries without).
	exe := filepath.Join(t.TempDir(), "app")
	cc := exec.Command("gcc", "-g", "-x", "c", "-o", exe, "-")
	cc.Stdin = strings.NewReader("int main(void) { return 0; }\n")
	if out, err := cc.CombinedOutput(); err != nil {
		t.Fatalf("gcc (apt-get install gcc): %v\n%s", err, out)
	}
	self, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	id := "20261201-101500-app-abcdef"
	w, err := st.Put(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"sysroot/usr/bin/app": self, "sysroot/usr/lib/libplain.so": []byte("\x7fELF not really")}
	for name, data := range files {
		f, err := w.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(data)
		f.Close()
	}
	m := &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: time.Now(), Comm: "app", Files: []bundle.File{
		{Path: "/usr/bin/app", Role: "exe", Stored: "sysroot/usr/bin/app", BuildID: "aa11"},
		{Path: "/usr/lib/libplain.so", Role: "mapped", Stored: "sysroot/usr/lib/libplain.so", BuildID: "bb22"},
	}}
	if err := w.Commit(ctx, m); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(&Server{Store: st, MaxBytes: 1 << 30, TempDir: t.TempDir()})
	defer srv.Close()
	get := func(path string) (int, []byte) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}
	for path, want := range map[string][]byte{
		"/buildid/aa11/executable":      self,
		"/buildid/aa11/debuginfo":       self,
		"/buildid/bb22/executable":      files["sysroot/usr/lib/libplain.so"],
		"/buildid/bb22/debuginfo":       nil,
		"/buildid/cc33/executable":      nil,
		"/buildid/aa11/source/x.c":      nil,
		"/buildid/../../etc/executable": nil,
	} {
		code, body := get(path)
		switch {
		case want == nil && code != http.StatusNotFound:
			t.Errorf("%s: %d, want 404", path, code)
		case want != nil && (code != http.StatusOK || string(body) != string(want)):
			t.Errorf("%s: %d, %d bytes; want 200 and %d bytes", path, code, len(body), len(want))
		}
	}
}
