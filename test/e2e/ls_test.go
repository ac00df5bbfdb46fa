package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/minio/minio-go/v7"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/test/harness"
)

// sre runs corecatch as an SRE does, on a store given by flags and no
// config file, and returns its stdout, stderr and error.
func sre(t *testing.T, storeArgs []string, args ...string) (string, string, error) {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "empty.yaml")
	writeFileT(t, cfg, nil)
	cmd := exec.Command(harness.Binary(t), append(append([]string{"--config", cfg}, storeArgs...), args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// s3Args are the flags of an s3:// store under prefix on srv, with its
// credentials in the environment.
func s3Args(t *testing.T, srv *harness.S3Server, prefix string) []string {
	t.Setenv("AWS_ACCESS_KEY_ID", "corecatch-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "corecatch-test-secret")
	return []string{"--store", "s3://" + srv.Bucket + "/" + prefix, "--s3-endpoint", srv.Endpoint(), "--s3-region", "us-east-1", "--s3-path-style"}
}

// putBundle writes a bundle of metadata m only (no core) into st.
func putBundle(t *testing.T, st store.Store, m *bundle.Metadata) {
	t.Helper()
	w, err := st.Put(context.Background(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// TestLsSkipsUnreadableBundle: one bundle whose metadata.json cannot be
// read (here an id shorter than any bundle's, as a hostile writer to a
// shared bucket plants it) is skipped with a warning on stderr that names
// it, in quotes; ls exits 0 with the others, and fails only when no bundle
// at all can be read. In a local store and in S3 (a real versitygw).
func TestLsSkipsUnreadableBundle(t *testing.T) {
	srv := harness.S3(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		args  []string
		plant func(id string, data []byte)
	}{
		{"file", []string{"--store", "file://" + dir}, func(id string, data []byte) {
			st := store.NewFile(dir)
			putBundle(t, st, &bundle.Metadata{Schema: bundle.Schema, ID: id})
			p, _ := st.BundleDir(id)
			writeFileT(t, filepath.Join(p, bundle.MetadataFile), data)
		}},
		{"s3", s3Args(t, srv, "p"), func(id string, data []byte) {
			if _, err := srv.Client.PutObject(context.Background(), srv.Bucket, "p/"+id+"/"+bundle.MetadataFile,
				bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now().UTC().Truncate(time.Second)
			bad := bundle.NewID(now, []byte("bad"))
			tc.plant(bad, []byte(`{"schema":1,"id":"\u001b[2Jx"}`))
			out, errOut, err := sre(t, tc.args, "ls")
			if err == nil || !strings.Contains(errOut, bad) {
				t.Errorf("ls with only an unreadable bundle: %v; stderr %q; want a failure naming %s", err, errOut, bad)
			}
			st, err := store.Open(tc.args[1], store.Options{S3: store.S3Options{Endpoint: srv.Endpoint(), Region: "us-east-1", PathStyle: true}})
			if err != nil {
				t.Fatal(err)
			}
			good := bundle.NewID(now.Add(-time.Minute), []byte("good"))
			putBundle(t, st, &bundle.Metadata{Schema: bundle.Schema, ID: good, Time: now, Comm: "good", SignalName: "SIGSEGV"})
			out, errOut, err = sre(t, tc.args, "ls")
			if err != nil || !strings.Contains(out, good) || strings.Contains(out, bad) {
				t.Errorf("ls: %v\nstdout:\n%s\nstderr:\n%s\nwant %s listed, exit 0", err, out, errOut, good)
			}
			if !strings.Contains(errOut, "warning") || !strings.Contains(errOut, bad) || !strings.Contains(errOut, `\x1b[2Jx`) || strings.Contains(errOut, "\x1b") {
				t.Errorf("ls's stderr %q: want a warning naming %s with the forged id quoted", errOut, bad)
			}
		})
	}
}

func writeFileT(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rawControl returns the first byte of out a terminal would act on or
// mis-render (a control character other than a line break, invalid
// UTF-8, a bidi override), or -1. (metadata.json turns invalid UTF-8 into
// U+FFFD, a printable glyph.)
func rawControl(out string) int {
	for i, r := range out {
		if (r < 0x20 && r != '\n') || r == 0x7f || (r == utf8.RuneError && !strings.HasPrefix(out[i:], "\ufffd")) || r == '\u202e' || (r >= 0x80 && r < 0xa0) {
			return i
		}
	}
	return -1
}

// TestShowEscapesNames: a bundle whose every name holds terminal escapes,
// control characters, invalid UTF-8 and a bidi override (all chosen by
// the crashed container, or by whoever wrote its metadata) is printed by
// ls and show with those bytes escaped.
func TestShowEscapesNames(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--store", "file://" + dir}
	evil := "x\x1b]0;owned\a\x1b[2J\r\xff\u202e\u0085"
	id := bundle.NewID(time.Now(), []byte("evil"))
	putBundle(t, store.NewFile(dir), &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: time.Now(), Node: evil, Comm: evil,
		Exe: evil, Cmdline: []string{evil, evil}, SignalName: evil, Cgroup: evil, Title: evil, Signature: evil,
		Pod: &bundle.Pod{Name: evil, Namespace: evil, UID: evil}, Container: &bundle.Container{ID: evil, Name: evil, Image: evil, Runtime: evil},
		Workload: &bundle.Workload{Kind: evil, Name: evil}, IdentitySource: evil, IdentityReason: evil,
		Freeze: &bundle.Freeze{Reason: evil}, Core: bundle.Core{Truncated: true, TruncateReason: evil, Compression: evil},
		Files: []bundle.File{{Path: evil, Role: evil, BuildID: evil, Skipped: evil}}, Warnings: []string{evil},
		Dedup: &bundle.Dedup{Of: evil, Key: evil}})
	for _, cmd := range [][]string{{"ls"}, {"show", id}} {
		out, errOut, err := sre(t, args, cmd...)
		if err != nil {
			t.Errorf("%v: %v\n%s", cmd, err, errOut)
		}
		if i := rawControl(out); i >= 0 || !strings.Contains(out, `\x1b]0;owned\a`) {
			t.Errorf("%v prints a raw %q at byte %d (or no escaped name):\n%q", cmd, out[max(i, 0):min(max(i, 0)+8, len(out))], i, out)
		}
	}
}
