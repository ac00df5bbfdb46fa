package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/test/harness"
)

// benchList measures `corecatch ls` and `corecatch bugs` on a bucket that
// 1,000 nodes shared for a week: bundles' metadata.json and index entries
// written straight into a real S3 service (versitygw on loopback), in
// parallel, each entry at the time its node would have written it; the
// settled hours compacted once, as the agents do; then each command run
// cold (a new process, nothing cached), from the index and, in the same
// run, by today's full scan (ls --scan: a GET per bundle). scanSubset > 0
// measures the full scan on that many bundles only and extrapolates.
func benchList(dir, bin string, bundles, nodes, scanSubset int) error {
	srv, err := harness.StartS3(filepath.Join(dir, "list")) // a bucket of its own
	if err != nil {
		return err
	}
	defer srv.Kill()
	cfg := filepath.Join(dir, "list.yaml")
	if err := os.WriteFile(cfg, []byte(srv.Config("bench")), 0o644); err != nil {
		return err
	}
	os.Setenv("AWS_ACCESS_KEY_ID", "corecatch-test")
	os.Setenv("AWS_SECRET_ACCESS_KEY", "corecatch-test-secret")
	open := func(prefix string) (*store.S3, error) {
		st, err := store.Open("s3://"+srv.Bucket+"/"+prefix, store.Options{S3: store.S3Options{Endpoint: srv.Endpoint(), Region: "us-east-1", PathStyle: true}})
		if err != nil {
			return nil, err
		}
		return st.(*store.S3), nil
	}
	s3, err := open("bench")
	if err != nil {
		return err
	}
	now := time.Now()
	ctx := context.Background()
	start := time.Now()
	if err := fillBucket(ctx, srv, s3, "bench", bundles, nodes, now); err != nil {
		return err
	}
	fmt.Printf("list: wrote %d bundles' metadata and index entries from %d nodes over 7 days in %.0fs\n", bundles, nodes, time.Since(start).Seconds())
	start = time.Now()
	segs, err := s3.CompactIndex(ctx, now)
	if err != nil {
		return err
	}
	fmt.Printf("list: compacted the settled hours into %d segments in %.1fs (the agents do this every ~30 min)\n", segs, time.Since(start).Seconds())

	run := func(args ...string) (time.Duration, int, error) {
		start := time.Now()
		cmd := exec.Command(bin, append([]string{"--config", cfg}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		wall := time.Since(start)
		if err != nil {
			return 0, 0, fmt.Errorf("corecatch %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return wall, bytes.Count(out, []byte("\n")) - 1, nil
	}
	fmt.Println("list: cold runs (a new process each), median of 3:")
	for _, args := range [][]string{{"ls"}, {"ls", "--since", "1h", "--namespace", "ns-03"}, {"bugs"}, {"ls", "-n", "20", "--json"}} {
		var walls []time.Duration
		rows := 0
		for range 3 {
			wall, n, err := run(args...)
			if err != nil {
				return err
			}
			walls, rows = append(walls, wall), n
		}
		sort.Slice(walls, func(i, j int) bool { return walls[i] < walls[j] })
		fmt.Printf("  corecatch %-40s %6.2fs  (%d lines)\n", strings.Join(args, " "), walls[1].Seconds(), rows)
	}
	scanned, scanArgs := bundles, []string{"ls", "--scan"}
	if scanSubset > 0 && scanSubset < bundles {
		if err := fillBucket(ctx, srv, nil, "subset", scanSubset, nodes, now); err != nil {
			return err
		}
		scanned = scanSubset
		scanArgs = append([]string{"--store", "s3://" + srv.Bucket + "/subset"}, scanArgs...)
	}
	wall, rows, err := run(scanArgs...)
	if err != nil {
		return err
	}
	if scanned == bundles {
		fmt.Printf("  corecatch ls --scan (today's full scan)           %6.2fs  (%d lines)\n", wall.Seconds(), rows)
	} else {
		fmt.Printf("  corecatch ls --scan (today's full scan) of %d    %6.2fs; extrapolated to %d: %.0fs\n", scanned, wall.Seconds(), bundles, wall.Seconds()*float64(bundles)/float64(scanned))
	}
	return nil
}

// fillBucket writes n bundles' metadata.json (realistic ones: a dozen
// files, a backtrace) under prefix, crashed over the 7 days before now on
// nodes nodes, in 20 namespaces of 10 workloads, of 300 bugs of which a few
// crash most; and, unless s3 is nil, each bundle's index entry as its
// node wrote it, a few seconds after the crash.
func fillBucket(ctx context.Context, srv *harness.S3Server, s3 *store.S3, prefix string, n, nodes int, now time.Time) error {
	next := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range next {
				if err := writeBenchBundle(ctx, srv, s3, prefix, i, nodes, now); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func writeBenchBundle(ctx context.Context, srv *harness.S3Server, s3 *store.S3, prefix string, i, nodes int, now time.Time) error {
	r := rand.New(rand.NewPCG(uint64(i), 17))
	when := now.Add(-time.Duration(r.Int64N(int64(7 * 24 * time.Hour)))).Truncate(time.Millisecond)
	bug := int(r.ExpFloat64()*30) % 300
	ns, wl := r.IntN(20), r.IntN(10)
	exe := fmt.Sprintf("/usr/bin/svc%d", bug%40)
	fn := fmt.Sprintf("handler_%d", bug)
	m := &bundle.Metadata{Schema: bundle.Schema, ID: bundle.NewID(when, []byte(filepath.Base(exe))), Time: when,
		Node: fmt.Sprintf("node-%04d", i%nodes), PID: 1000 + i, Comm: filepath.Base(exe), Exe: exe, Cmdline: []string{exe, "--serve"},
		Signal: 11, SignalName: "SIGSEGV", Cgroup: "/kubepods/burstable/pod" + fmt.Sprint(i),
		Pod:       &bundle.Pod{Namespace: fmt.Sprintf("ns-%02d", ns), Name: fmt.Sprintf("wl-%d-%x", wl, r.Uint32()), UID: fmt.Sprint(i)},
		Container: &bundle.Container{ID: fmt.Sprintf("%064x", i), Name: "main", Image: "registry/svc:1", Runtime: "containerd"},
		Workload:  &bundle.Workload{Kind: "Deployment", Name: fmt.Sprintf("wl-%d", wl)},
		Title:     fmt.Sprintf("SIGSEGV in %s (%s)", fn, filepath.Base(exe)), Signature: fmt.Sprintf("%016x", bug*7919+1),
		Core: bundle.Core{RawBytes: 64 << 20, Compression: "zstd"},
	}
	if r.IntN(10) == 0 {
		m.Core.StoredBytes, m.Core.KeptBytes = 3<<20, 64<<20
	} else {
		m.Core.Truncated, m.Core.TruncateReason = true, bundle.ReasonDedup
		m.Dedup = &bundle.Dedup{Of: m.ID, Count: 1}
	}
	for f := range 12 {
		m.Files = append(m.Files, bundle.File{Path: fmt.Sprintf("/usr/lib/x86_64-linux-gnu/lib%d.so.6", f), Size: 2 << 20, Role: "mapped",
			BuildID: fmt.Sprintf("%040x", f), Stored: fmt.Sprintf("sysroot/usr/lib/x86_64-linux-gnu/lib%d.so.6", f)})
	}
	for f := range 10 {
		m.Backtrace = append(m.Backtrace, bundle.Frame{Function: fmt.Sprintf("%s_%d", fn, f), Module: filepath.Base(exe), Offset: uint64(0x1000 + f*64)})
	}
	data, err := bundle.Encode(m)
	if err != nil {
		return err
	}
	key := prefix + "/" + m.ID + "/" + bundle.MetadataFile
	if _, err := srv.Client.PutObject(ctx, srv.Bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{DisableMultipart: true}); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if s3 == nil {
		return nil
	}
	return s3.Index(ctx, m, when.Add(time.Duration(r.IntN(5000))*time.Millisecond))
}

// The list benchmark's size.
var (
	listBundles = flag.Int("list-bundles", 100000, "bundles in the bucket whose ls and bugs are measured")
	listScan    = flag.Int("list-scan", 0, "measure the full scan (ls --scan) on this many bundles only, and extrapolate (0: on all)")
)
