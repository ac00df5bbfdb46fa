package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/test/coregen"
	"github.com/corecatch/corecatch/test/harness"
)

// benchPull measures `corecatch pull` of a bundle whose core.zst is about
// sizeMiB, from a real S3 service (versitygw on loopback), against a plain
// download of the same objects with minio-go's FGetObject, alternating,
// runs times each in one run: the median of each, their ratio (target
// <= 1.2x) and pull's peak RSS.
func benchPull(dir, bin string, sizeMiB, runs int) error {
	srv, err := harness.StartS3(filepath.Join(dir, "pull")) // a bucket of its own
	if err != nil {
		return err
	}
	defer srv.Kill()
	const prefix = "pullbench"
	cfg := filepath.Join(dir, "pull.yaml")
	if err := os.WriteFile(cfg, []byte(srv.Config(prefix)+"spool: "+filepath.Join(dir, "pull-spool")+"\n"), 0o644); err != nil {
		return err
	}
	st, err := store.Open("s3://"+srv.Bucket+"/"+prefix, store.Options{S3: store.S3Options{
		Endpoint: srv.Endpoint(), Region: "us-east-1", PathStyle: true, CredentialsFile: srv.Credentials}})
	if err != nil {
		return err
	}
	ctx := context.Background()
	// One MiB block in three is zeros: 1.5x the stored size raw.
	m, err := coregen.PutCoreBundle(ctx, st, coregen.SyntheticCore(int64(sizeMiB)<<20*3/2, 2))
	if err != nil {
		return err
	}
	var keys []string
	for obj := range srv.Client.ListObjects(ctx, srv.Bucket, minio.ListObjectsOptions{Prefix: prefix + "/" + m.ID + "/", Recursive: true}) {
		if obj.Err != nil {
			return obj.Err
		}
		keys = append(keys, obj.Key)
	}
	out := filepath.Join(dir, "pulled")
	plain := func() (time.Duration, error) {
		os.RemoveAll(out)
		start := time.Now()
		for _, k := range keys {
			if err := srv.Client.FGetObject(ctx, srv.Bucket, k, filepath.Join(out, strings.TrimPrefix(k, prefix+"/")), minio.GetObjectOptions{}); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	var peak int64
	var pullCPU []time.Duration
	pull := func() (time.Duration, error) {
		os.RemoveAll(out)
		start := time.Now()
		cmd := exec.Command(bin, "--config", cfg, "pull", m.ID, "--out", out)
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		// The child's own peak, from /proc while it runs: its rusage's
		// maxrss starts at this process's peak (os/exec forks with vfork,
		// and exec keeps the peak of the memory it replaces: /bin/true run
		// from a Go process of 300 MiB reports 302 MiB), which put the
		// bench's own 167 MiB in the report as pull's.
		done := make(chan struct{})
		hwm := make(chan int64)
		go func() {
			var p int64
			for {
				p = max(p, procHWM(cmd.Process.Pid))
				select {
				case <-done:
					hwm <- p
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		}()
		err := cmd.Wait()
		wall := time.Since(start)
		close(done)
		peak = max(peak, <-hwm)
		pullCPU = append(pullCPU, cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime())
		if err != nil {
			return 0, fmt.Errorf("corecatch pull: %v\n%s", err, b.Bytes())
		}
		return wall, nil
	}
	var plains, pulls []time.Duration
	for range runs {
		for _, r := range []struct {
			f   func() (time.Duration, error)
			out *[]time.Duration
		}{{plain, &plains}, {pull, &pulls}} {
			exec.Command("sync").Run()
			d, err := r.f()
			if err != nil {
				return err
			}
			*r.out = append(*r.out, d)
		}
		// Other work on the machine moves both figures: each round's pair,
		// with the load it ran under.
		load, _ := os.ReadFile("/proc/loadavg")
		fmt.Printf("  round %d: FGetObject %.2fs, pull %.2fs (%.2fx; its CPU %.2fs), load %s\n", len(pulls),
			plains[len(plains)-1].Seconds(), pulls[len(pulls)-1].Seconds(),
			pulls[len(pulls)-1].Seconds()/plains[len(plains)-1].Seconds(), pullCPU[len(pullCPU)-1].Seconds(),
			strings.Join(strings.Fields(string(load))[:3], " "))
	}
	defer os.RemoveAll(out)
	median := func(d []time.Duration) time.Duration {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2]
	}
	p, c := median(plains), median(pulls)
	mb := float64(m.Core.StoredBytes) / 1e6
	fmt.Printf("pull: a %.0f MB core.zst (%.0f MB raw) from versitygw on loopback, median of %d\n", mb, float64(m.Core.RawBytes)/1e6, runs)
	fmt.Printf("  minio-go FGetObject of its objects: %.2fs (%.0f MB/s)\n", p.Seconds(), mb/p.Seconds())
	fmt.Printf("  corecatch pull (ranged, decompressed, sparse): %.2fs (%.0f MB/s): %.2fx (target <= 1.2x: %s)\n",
		c.Seconds(), mb/c.Seconds(), c.Seconds()/p.Seconds(), verdict(c.Seconds() <= 1.2*p.Seconds()))
	fmt.Printf("  pull's peak RSS: %.1f MiB\n", float64(peak)/(1<<20))
	return nil
}
