package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/observer"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
)

// newMissing is a worker's missing-core watch over a spool and store in
// dir; published gets each "missing" bundle it writes.
func newMissing(dir string, published chan<- *bundle.Metadata) *missing {
	return &missing{store: store.NewFile(filepath.Join(dir, "store")), after: 10 * time.Millisecond, node: "n",
		log: zap.NewNop(), freezeCgroup: func(int) string { return "" }, storeOp: func(string, error) {},
		published: func(m *bundle.Metadata) { published <- m }, pending: map[int]*pendingCore{},
		records: spool.Open(filepath.Join(dir, "spool")).Missing()}
}

// TestMissingTakenSurvivesWorker: a crash an intake took before its eBPF
// event was read is on disk at once, so a worker killed during its
// collection leaves it to the next, which records it as missing; one
// whose bundle came is forgotten.
func TestMissingTakenSurvivesWorker(t *testing.T) {
	dir := t.TempDir()
	published := make(chan *bundle.Metadata, 2)
	killed := newMissing(dir, published)
	pid := os.Getpid()
	killed.taken(pid)
	killed.taken(pid + 1)
	killed.reported(pid + 1)

	next := newMissing(dir, published)
	next.resume()
	select {
	case m := <-published:
		if m.PID != pid || m.Core.TruncateReason != bundle.ReasonMissing || m.Comm == "" {
			t.Fatalf("recorded pid %d reason %q comm %q, want pid %d missing with its name", m.PID, m.Core.TruncateReason, m.Comm, pid)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the next worker did not record the crash its predecessor had taken")
	}
	select {
	case m := <-published:
		t.Fatalf("a crash whose bundle came was recorded as missing: pid %d", m.PID)
	case <-time.After(100 * time.Millisecond):
	}
	if pids := next.records.PIDs(); len(pids) != 0 {
		t.Errorf("records left after the crash was recorded: %v", pids)
	}
}

// TestMissingLateEvent: a core event the watcher reads only after its
// crash's bundle was reported is not waited for, while a later crash of
// the same pid is.
func TestMissingLateEvent(t *testing.T) {
	published := make(chan *bundle.Metadata, 2)
	x := newMissing(t.TempDir(), published)
	const pid = 4242
	late := observer.Event{Kind: observer.KindCore, TGID: pid, Monotonic: monotonic(), Time: time.Now(), Comm: "late"}
	x.reported(pid)
	x.core(late)
	x.exit(observer.Event{TGID: pid})
	select {
	case m := <-published:
		t.Fatalf("a crash whose bundle came before its event was read was recorded as missing: %s", m.Comm)
	case <-time.After(100 * time.Millisecond):
	}
	next := late
	next.Monotonic, next.Comm = monotonic(), "next"
	x.core(next)
	x.exit(observer.Event{TGID: pid})
	select {
	case m := <-published:
		if m.Comm != "next" {
			t.Fatalf("recorded %q, want the later crash", m.Comm)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a later crash of the pid was not waited for")
	}
}
