package metrics

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// TestBundle counts a whole core and a truncated one, and checks that every
// drop reason exists at 0 before its first drop (else increase() misses it).
func TestBundle(t *testing.T) {
	m := New("test", func() float64 { return 3 })
	if got := testutil.ToFloat64(m.coresDropped.WithLabelValues("missing")); got != 0 {
		t.Fatalf("dropped{missing} starts at %v", got)
	}
	if n := testutil.CollectAndCount(m.coresDropped); n != len(DropReasons) {
		t.Errorf("%d drop reasons exported before any drop, want %d", n, len(DropReasons))
	}
	whole := &bundle.Metadata{Time: time.Unix(1000, 0), Exe: "/usr/bin/app", SignalName: "SIGSEGV",
		Pod: &bundle.Pod{Namespace: "shop"}, Workload: &bundle.Workload{Kind: "Deployment", Name: "cart"},
		Container: &bundle.Container{Name: "cart"}, Core: bundle.Core{RawBytes: 100, StoredBytes: 10},
		Freeze: &bundle.Freeze{Frozen: true, LatencyMS: 2, DurationMS: 800}, Collector: bundle.Collector{DurationSeconds: 1.5}}
	m.Bundle(whole)
	m.Bundle(&bundle.Metadata{Time: time.Unix(2000, 0), SignalName: "SIGABRT", Core: bundle.Core{Truncated: true, TruncateReason: bundle.ReasonMissing}})
	for _, tc := range []struct {
		got, want float64
		what      string
	}{
		{testutil.ToFloat64(m.crashes.WithLabelValues("shop", "Deployment/cart", "cart", "app", "SIGSEGV")), 1, "crashes of cart"},
		{testutil.ToFloat64(m.coresStored), 1, "cores stored"},
		{testutil.ToFloat64(m.coresDropped.WithLabelValues("missing")), 1, "cores dropped missing"},
		{testutil.ToFloat64(m.coreBytes.WithLabelValues("raw")), 100, "raw bytes"},
		{testutil.ToFloat64(m.lastCrash), 2000, "last crash"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.what, tc.got, tc.want)
		}
	}
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(`
# HELP corecatch_ebpf_events_lost_total eBPF events lost: the kernel's ring buffer was full, or the agent's reader was too slow.
# TYPE corecatch_ebpf_events_lost_total counter
corecatch_ebpf_events_lost_total 3
`), "corecatch_ebpf_events_lost_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(m.Registry, "corecatch_freeze_latency_seconds"); err != nil || n != 1 {
		t.Errorf("freeze latency series %d, %v", n, err)
	}
}

// TestExeLabelBounded: names a container picks become at most the first N
// distinct values, then "other", each printable and short.
func TestExeLabelBounded(t *testing.T) {
	m := New("test", nil)
	m.LimitExeLabels(3)
	crash := func(exe string) {
		m.Bundle(&bundle.Metadata{Time: time.Unix(1, 0), Exe: exe, SignalName: "SIGSEGV"})
	}
	for i := 0; i < 50; i++ {
		crash(fmt.Sprintf("/tmp/evil-%d", i))
	}
	crash("/tmp/evil-1") // one of the first three keeps its own series
	crash("/x/\x1b[31mred\x00\xff" + strings.Repeat("é", 100))
	got := map[string]float64{}
	ch := make(chan prometheus.Metric, 100)
	m.crashes.Collect(ch)
	close(ch)
	for pm := range ch {
		var d dto.Metric
		if err := pm.Write(&d); err != nil {
			t.Fatal(err)
		}
		for _, l := range d.GetLabel() {
			if l.GetName() == "exe" {
				got[l.GetValue()] = d.GetCounter().GetValue()
			}
		}
	}
	want := map[string]float64{"evil-0": 1, "evil-1": 2, "evil-2": 1, OtherExe: 48}
	if !maps.Equal(got, want) {
		t.Errorf("crashes by exe = %v, want %v", got, want)
	}
	if l := printable("\x1b[31mred\x00\xff"+strings.Repeat("é", 100), MaxExeLabelBytes); l != "?[31mred??"+strings.Repeat("é", 27) {
		t.Errorf("printable = %q", l)
	}
}
