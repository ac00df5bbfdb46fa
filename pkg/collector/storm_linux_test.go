package collector

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
)

// TestReadHeadNonBlocking: a non-blocking pipe that has nothing yet makes
// os.File.Read return EAGAIN wrapped in a *PathError; readHead waits for
// the core instead of failing on it.
func TestReadHeadNonBlocking(t *testing.T) {
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r, w := os.NewFile(uintptr(fds[0]), "core"), os.NewFile(uintptr(fds[1]), "kernel")
	// Made non-blocking behind os.File's back (which polls only the
	// descriptors it found non-blocking), as a shared pipe may be.
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	core := syntheticCore(1 << 20)
	go func() {
		time.Sleep(50 * time.Millisecond)
		w.Write(core[:64<<10])
		w.Close()
	}()
	head, _, err := readHead(&stallReader{f: r})
	if errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("readHead gave up on EAGAIN: %v", err)
	}
	if len(head) == 0 {
		t.Fatalf("readHead read nothing (err %v)", err)
	}
}

// claimer is a cluster's claim, for TestStormReason: a real one needs an S3
// store (TestS3ClusterDedup runs that end to end).
type claimer struct {
	holder string
	err    error
}

func (c claimer) Claim(ctx context.Context, key string, window time.Duration, id string, now time.Time) (string, error) {
	if c.holder == "" {
		return id, c.err
	}
	return c.holder, c.err
}

// TestStormReason runs the storm's decision on a real spool (its flock-ed
// records), as any user: one core per bug and window, the rate's
// allowance for first crashes only, and a window held on another node.
func TestStormReason(t *testing.T) {
	cfg := &config.Config{Spool: t.TempDir()}
	cfg.Dedup.Window = config.Duration(time.Hour)
	cfg.Collect.MaxCoresPerMinute = 2
	n := 0
	crash := func(sig string, c Claimer) (string, *bundle.Metadata) {
		n++
		m := &bundle.Metadata{ID: fmt.Sprintf("crash-%d", n), Signature: sig}
		return stormReason(context.Background(), cfg, c, m, "crasher-abc"), m
	}
	if r, m := crash("bug1", nil); r != "" || m.Dedup == nil || m.Dedup.Count != 1 || m.Dedup.Of != "" {
		t.Fatalf("first crash of bug1: %q, %+v; want its core kept, count 1", r, m.Dedup)
	}
	for i := 2; i <= 4; i++ {
		if r, m := crash("bug1", nil); r != bundle.ReasonDedup || m.Dedup.Of != "crash-1" || m.Dedup.Count != i {
			t.Errorf("crash %d of bug1: %q, %+v; want a duplicate of crash-1", i, r, m.Dedup)
		}
	}
	if r, _ := crash("bug2", nil); r != "" {
		t.Errorf("first crash of bug2: %q, want its core kept (2 a minute)", r)
	}
	for range 2 {
		// No window opens for a rate-limited crash: the next one asks again.
		if r, m := crash("bug3", nil); r != bundle.ReasonRateLimit || m.Dedup != nil {
			t.Errorf("bug3 over the rate: %q, %+v; want rate_limit and no dedup section", r, m.Dedup)
		}
	}
	if r, m := crash("bug4", claimer{holder: "node2-crash"}); r != bundle.ReasonDedup || m.Dedup.Of != "node2-crash" || m.Dedup.Until.UnixNano()%int64(time.Hour) != 0 {
		t.Errorf("bug4 held on another node: %q, %+v; want a duplicate of its crash, until the end of an aligned hour", r, m.Dedup)
	}
	if r, m := crash("bug5", claimer{err: errors.New("503 Slow Down")}); r != bundle.ReasonRateLimit || len(m.Warnings) != 1 || !strings.Contains(m.Warnings[0], "on this node only") {
		t.Errorf("bug5 with the cluster claim failing, over the rate: %q, warnings %q", r, m.Warnings)
	}

	// Without a window, the rate alone decides.
	cfg = &config.Config{Spool: t.TempDir()}
	cfg.Collect.MaxCoresPerMinute = 1
	if r, m := crash("bug1", nil); r != "" || m.Dedup != nil {
		t.Errorf("dedup off, first core: %q, %+v", r, m.Dedup)
	}
	if r, _ := crash("bug1", nil); r != bundle.ReasonRateLimit {
		t.Errorf("dedup off, second core in the minute: %q, want rate_limit", r)
	}
}
