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
