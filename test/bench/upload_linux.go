package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/test/harness"
)

// benchUpload measures the upload of a bundle of sizeMiB incompressible
// MiB from the outbox to a real S3 service (versitygw on loopback) by
// `corecatch upload`, the agent's uploader run once: its time and the
// uploader's RSS growth, its peak against its peak for a 1 MiB bundle.
func benchUpload(dir, bin string, sizeMiB int) error {
	srv, err := harness.StartS3(dir)
	if err != nil {
		return err
	}
	defer srv.Kill()
	sp := spool.Open(filepath.Join(dir, "upload-spool"))
	cfg := filepath.Join(dir, "upload.yaml")
	if err := os.WriteFile(cfg, []byte(srv.Config("bench")+"spool: "+sp.String()+"\n"), 0o644); err != nil {
		return err
	}
	outbox := store.NewFile(sp.Outbox())
	run := func(mib int) (time.Duration, int64, error) {
		if err := spoolBundle(outbox, int64(mib)<<20); err != nil {
			return 0, 0, err
		}
		exec.Command("sync").Run()
		start := time.Now()
		cmd := exec.Command(bin, "--config", cfg, "upload")
		out, err := cmd.CombinedOutput()
		wall := time.Since(start)
		if err != nil {
			return 0, 0, fmt.Errorf("corecatch upload: %v\n%s", err, out)
		}
		if ids, _ := outbox.IDs(); len(ids) != 0 {
			return 0, 0, fmt.Errorf("corecatch upload left %q in the outbox:\n%s", ids, out)
		}
		return wall, cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss * 1024, nil
	}
	_, base, err := run(1)
	if err != nil {
		return err
	}
	wall, peak, err := run(sizeMiB)
	if err != nil {
		return err
	}
	growth := peak - base
	fmt.Printf("upload: a %d MiB bundle from the outbox to versitygw on loopback in %.1fs (%.0f MB/s)\n",
		sizeMiB, wall.Seconds(), float64(int64(sizeMiB)<<20)/1e6/wall.Seconds())
	fmt.Printf("uploader RSS growth:          %.1f MiB (peak %.1f MiB, %.1f MiB for a 1 MiB bundle; target < 128 MiB: %s)\n",
		float64(growth)/(1<<20), float64(peak)/(1<<20), float64(base)/(1<<20), verdict(growth < 128<<20))
	return nil
}

// spoolBundle publishes a bundle with a core.zst of size random bytes in
// the outbox, as the helper would.
func spoolBundle(outbox *store.File, size int64) error {
	now := time.Now().UTC()
	id := bundle.NewID(now, []byte("bench"))
	w, err := outbox.Put(context.Background(), id)
	if err != nil {
		return err
	}
	defer w.Abort()
	f, err := w.Create(bundle.CoreFile)
	if err != nil {
		return err
	}
	rng := rand.NewChaCha8([32]byte{byte(size)})
	buf := make([]byte, 4<<20)
	for left := size; left > 0; left -= int64(len(buf)) {
		rng.Read(buf)
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	m := &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: now.Truncate(time.Second), Comm: "bench",
		Core: bundle.Core{Compression: "zstd", StoredBytes: size}}
	return w.Commit(context.Background(), m)
}
