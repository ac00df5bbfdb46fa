package collector

import (
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
)

// These tests run as any user, on any OS: the decisions are functions of
// plain values (decide.go).

func TestCoreLimit(t *testing.T) {
	mib := func(n int64) config.Size { return config.Size{Bytes: n << 20} }
	for _, tc := range []struct {
		name       string
		c          config.Collect
		rlimit     int64
		limit      int64
		wantReason string
	}{
		{"no bound keeps all", config.Collect{}, -1, -1, bundle.ReasonMaxCoreBytes},
		{"rlimit ignored unless honoured", config.Collect{}, 4096, -1, bundle.ReasonMaxCoreBytes},
		{"max_core_bytes", config.Collect{MaxCoreBytes: mib(4)}, -1, 4 << 20, bundle.ReasonMaxCoreBytes},
		{"lower rlimit honoured", config.Collect{MaxCoreBytes: mib(4), HonorRlimit: true}, 1 << 20, 1 << 20, bundle.ReasonRlimit},
		{"higher rlimit: max_core_bytes", config.Collect{MaxCoreBytes: mib(4), HonorRlimit: true}, 8 << 20, 4 << 20, bundle.ReasonMaxCoreBytes},
		{"unlimited rlimit honoured", config.Collect{HonorRlimit: true}, -1, -1, bundle.ReasonMaxCoreBytes},
		{"rlimit alone", config.Collect{HonorRlimit: true}, 1 << 20, 1 << 20, bundle.ReasonRlimit},
		{"rlimit 0 keeps nothing", config.Collect{MaxCoreBytes: mib(4), HonorRlimit: true}, 0, 0, bundle.ReasonRlimit},
	} {
		limit, reason := coreLimit(tc.c, tc.rlimit)
		if limit != tc.limit || reason != tc.wantReason {
			t.Errorf("%s: coreLimit = %d, %q; want %d, %q", tc.name, limit, reason, tc.limit, tc.wantReason)
		}
	}
}

// TestDecideCore: each refusal in its order, and the storm's and the
// slot's checks made only when nothing before refused the core (they count
// the crash and hold a slot).
func TestDecideCore(t *testing.T) {
	open := config.PodPolicy{Collect: true, Freeze: true, Notify: true}
	closed := config.PodPolicy{Why: "corecatch.io/collect: false"}
	for _, tc := range []struct {
		name         string
		limit        int64
		pol          config.PodPolicy
		refuse       string
		storm        string
		slot         bool
		want         verdict
		asked, slots bool // storm asked, slot taken
	}{
		{name: "kept whole", limit: -1, pol: open, slot: true,
			want: verdict{keep: true, limit: -1, reason: bundle.ReasonMaxCoreBytes}, asked: true, slots: true},
		{name: "kept up to the limit", limit: 4096, pol: open, slot: true,
			want: verdict{keep: true, limit: 4096, reason: bundle.ReasonMaxCoreBytes}, asked: true, slots: true},
		{name: "limit 0: no core, files kept, nothing counted", limit: 0, pol: closed, refuse: bundle.ReasonBusy,
			want: verdict{limit: 0, reason: bundle.ReasonMaxCoreBytes}},
		{name: "excluded by the pod's policy", limit: -1, pol: closed,
			want: verdict{reason: bundle.ReasonPodPolicy, light: true, warning: "core not kept: corecatch.io/collect: false"}},
		{name: "refused by the intake", limit: -1, pol: open, refuse: bundle.ReasonBusy,
			want: verdict{reason: bundle.ReasonBusy, light: true}},
		{name: "a duplicate: its metadata alone", limit: -1, pol: open, storm: bundle.ReasonDedup,
			want: verdict{reason: bundle.ReasonDedup, light: true, meta: true}, asked: true},
		{name: "over the rate", limit: -1, pol: open, storm: bundle.ReasonRateLimit,
			want: verdict{reason: bundle.ReasonRateLimit, light: true}, asked: true},
		{name: "no collection slot", limit: -1, pol: open, slot: false,
			want: verdict{reason: bundle.ReasonRateLimit, light: true}, asked: true, slots: true},
	} {
		var asked, slots bool
		storm := func() string { asked = true; return tc.storm }
		slot := func() bool { slots = true; return tc.slot }
		got := decideCore(tc.limit, bundle.ReasonMaxCoreBytes, tc.pol, tc.refuse, storm, slot)
		if got != tc.want {
			t.Errorf("%s: decideCore = %+v, want %+v", tc.name, got, tc.want)
		}
		if asked != tc.asked || slots != tc.slots {
			t.Errorf("%s: storm asked %v, slot taken %v; want %v, %v", tc.name, asked, slots, tc.asked, tc.slots)
		}
	}
}

func TestUnanswered(t *testing.T) {
	kept := verdict{keep: true, limit: -1, reason: bundle.ReasonMaxCoreBytes}
	if got, want := kept.unanswered(), (verdict{reason: bundle.ReasonError}); got != want {
		t.Errorf("a kept core the kernel took no answer for: %+v, want %+v", got, want)
	}
}

func TestAnswerTimeFor(t *testing.T) {
	for _, tc := range []struct {
		answers bool
		stack   int
		want    answerTime
	}{
		{false, 0, answerNone},
		{false, 5, answerNone}, // the pipe: dumped whatever is decided
		{true, 0, answerFirst},
		{true, 5, answerOnStack},
	} {
		if got := answerTimeFor(tc.answers, tc.stack); got != tc.want {
			t.Errorf("answerTimeFor(%v, %d) = %d, want %d", tc.answers, tc.stack, got, tc.want)
		}
	}
}

// TestAgentAnswered: what the agent's answer to the lookup decides, the
// cgroup that names the container (/proc is read only when the freeze
// did not) and whether it is thawed.
func TestAgentAnswered(t *testing.T) {
	proc := "/kubepods/pod1/abc"
	for _, tc := range []struct {
		name    string
		freeze  *bundle.Freeze
		pending bool
		cgroup  string
		read    bool
		thaw    bool
	}{
		{"no agent", nil, false, proc, true, false},
		{"not frozen", &bundle.Freeze{Reason: "policy"}, false, proc, true, false},
		{"frozen in its cgroup", &bundle.Freeze{Frozen: true, Cgroup: "/kubepods/pod1/def"}, false, "/kubepods/pod1/def", false, true},
		{"frozen, cgroup unknown", &bundle.Freeze{Frozen: true}, false, proc, true, true},
		{"still freezing", &bundle.Freeze{Cgroup: "/kubepods/pod1/def"}, true, "/kubepods/pod1/def", false, true},
	} {
		read := false
		if got := crashCgroup(tc.freeze, func() string { read = true; return proc }); got != tc.cgroup || read != tc.read {
			t.Errorf("%s: crashCgroup = %q (read /proc: %v), want %q (%v)", tc.name, got, read, tc.cgroup, tc.read)
		}
		if got := thawAfter(tc.freeze, tc.pending); got != tc.thaw {
			t.Errorf("%s: thawAfter = %v, want %v", tc.name, got, tc.thaw)
		}
	}
}

func TestHeldFor(t *testing.T) {
	start := time.Unix(1000, 0)
	if got := heldFor(start, time.Time{}, start.Add(3*time.Second)); got != 3*time.Second {
		t.Errorf("held until now: %s", got)
	}
	if got := heldFor(start, start.Add(time.Second), start.Add(3*time.Second)); got != time.Second {
		t.Errorf("released before its dump: %s, want 1s", got)
	}
}

func TestAnalysisState(t *testing.T) {
	for _, tc := range []struct {
		name             string
		kept             bool
		stored           int64
		gdb              string
		agent, updatable bool
		pending          bool
		reason           string
	}{
		{"unwound by the agent", true, 100, "gdb", true, true, true, ""},
		{"core not kept", false, 100, "gdb", true, true, false, ""},
		{"nothing stored", true, 0, "gdb", true, true, false, ""},
		{"gdb off", true, 100, "", true, true, false, "the full unwind is off (analysis.gdb)"},
		{"no agent", true, 100, "gdb", false, true, false, "no agent ran to unwind the core with gdb"},
		{"store cannot amend", true, 100, "gdb", true, false, false, "the store cannot amend metadata"},
	} {
		pending, reason := analysisState(tc.kept, tc.stored, tc.gdb, tc.agent, tc.updatable)
		if pending != tc.pending || reason != tc.reason {
			t.Errorf("%s: analysisState = %v, %q; want %v, %q", tc.name, pending, reason, tc.pending, tc.reason)
		}
	}
}

func TestDedupKey(t *testing.T) {
	d := config.Dedup{Window: config.Duration(time.Hour), Namespaces: []config.NamespaceWindow{
		{Namespace: "batch-*", Window: 0}, {Namespace: "web", Window: config.Duration(time.Minute)}}}
	deploy := &bundle.Workload{Kind: "Deployment", Name: "api"}
	for _, tc := range []struct {
		name     string
		pod      *bundle.Pod
		workload *bundle.Workload
		key      string
		window   time.Duration
	}{
		{"host process: its executable", nil, nil, "crasher-abc sig1", time.Hour},
		{"a workload's pods share a key", &bundle.Pod{Namespace: "web", Name: "api-1"}, deploy, "web/Deployment/api sig1", time.Minute},
		{"namespace without override", &bundle.Pod{Namespace: "shop"}, deploy, "shop/Deployment/api sig1", time.Hour},
		{"dedup off in a namespace", &bundle.Pod{Namespace: "batch-7"}, nil, "crasher-abc sig1", 0},
	} {
		key, window := dedupKey(d, tc.pod, tc.workload, "crasher-abc", "sig1")
		if key != tc.key || window != tc.window {
			t.Errorf("%s: dedupKey = %q, %s; want %q, %s", tc.name, key, window, tc.key, tc.window)
		}
	}
}

// TestDedupRecordNext: a crash within its bug's window is counted against
// the window's holder; past it, or first, the holder is asked, and a
// window held on another node ends where that node's does.
func TestDedupRecordNext(t *testing.T) {
	now := time.Unix(1_700_000_030, 0)
	window := time.Minute
	asked := 0
	holder := func(h string, err error) func() (string, error) {
		return func() (string, error) { asked++; return h, err }
	}
	running := dedupRecord{First: "a", Count: 2, Until: now.Add(time.Second)}

	asked = 0
	if got, err := running.next("b", window, now, holder("x", nil)); err != nil || got != (dedupRecord{First: "a", Count: 3, Until: running.Until}) || asked != 0 {
		t.Errorf("within the window: %+v, %v, holder asked %d times", got, err, asked)
	}
	expired := dedupRecord{First: "a", Count: 9, Until: now}
	if got, _ := expired.next("b", window, now, holder("b", nil)); got != (dedupRecord{First: "b", Count: 1, Until: now.Add(window)}) || asked != 1 {
		t.Errorf("past the window, this crash holds the next: %+v (holder asked %d times)", got, asked)
	}
	aligned := time.Unix(1_700_000_040, 0) // the next multiple of a minute
	if got, _ := (dedupRecord{}).next("b", window, now, holder("other-node", nil)); got != (dedupRecord{First: "other-node", Count: 1, Until: aligned}) {
		t.Errorf("held on another node: %+v, want until %s", got, aligned)
	}
	rateErr := errors.New("rate record: read-only")
	if got, err := (dedupRecord{}).next("b", window, now, holder("", rateErr)); got.Count != 0 || err != rateErr {
		t.Errorf("rate-limited first crash: %+v, %v; want count 0 and the holder's error", got, err)
	}
}

func TestWindowEnd(t *testing.T) {
	if got, want := windowEnd(time.Unix(125, 0), time.Minute), time.Unix(180, 0); !got.Equal(want) {
		t.Errorf("windowEnd = %s, want %s", got, want)
	}
}

// TestWindowHolder: who keeps a new window's core, with and without
// cluster-wide dedup.
func TestWindowHolder(t *testing.T) {
	claim := func(h string, err error) func() (string, error) {
		return func() (string, error) { return h, err }
	}
	for _, tc := range []struct {
		name    string
		claim   func() (string, error)
		allow   bool
		want    string
		allowed bool // the allowance was asked
		warned  bool
	}{
		{"node-local, allowed", nil, true, "me", true, false},
		{"node-local, over the rate", nil, false, "", true, false},
		{"claimed by another node", claim("them", nil), true, "them", false, false},
		{"claimed by this crash, allowed", claim("me", nil), true, "me", true, false},
		{"claimed by this crash, over the rate", claim("me", nil), false, "", true, false},
		{"claim failed: this node decides", claim("", errors.New("503")), true, "me", true, true},
	} {
		allowed, warned := false, false
		allow := func() (bool, error) { allowed = true; return tc.allow, nil }
		got, err := windowHolder("me", tc.claim, allow, func(w string) { warned = true })
		if got != tc.want || err != nil || allowed != tc.allowed || warned != tc.warned {
			t.Errorf("%s: windowHolder = %q, %v (allowance asked %v, warned %v); want %q (%v, %v)",
				tc.name, got, err, allowed, warned, tc.want, tc.allowed, tc.warned)
		}
	}
}

func TestDedupOutcome(t *testing.T) {
	until := time.Unix(2000, 0)
	if r, d := dedupOutcome("k", "", 0, time.Time{}); r != bundle.ReasonRateLimit || d != nil {
		t.Errorf("first crash over the rate: %q, %+v", r, d)
	}
	if r, d := dedupOutcome("k", "", 1, until); r != "" || !reflect.DeepEqual(d, &bundle.Dedup{Count: 1, Key: "k", Until: until}) {
		t.Errorf("a window's first crash: %q, %+v", r, d)
	}
	if r, d := dedupOutcome("k", "first", 4, until); r != bundle.ReasonDedup || !reflect.DeepEqual(d, &bundle.Dedup{Of: "first", Count: 4, Key: "k", Until: until}) {
		t.Errorf("a duplicate: %q, %+v", r, d)
	}
}

func TestAdmit(t *testing.T) {
	now := time.Unix(1000, 0)
	ago := func(d time.Duration) int64 { return now.Add(-d).UnixNano() }
	old, recent := ago(61*time.Second), ago(10*time.Second)
	if got, ok := admit([]int64{old, recent}, 2, now); !ok || !slices.Equal(got, []int64{recent, now.UnixNano()}) {
		t.Errorf("one within the minute, two allowed: %v, %v", got, ok)
	}
	if got, ok := admit([]int64{recent, ago(time.Second)}, 2, now); ok || len(got) != 2 {
		t.Errorf("two within the minute, two allowed: %v, %v; want refused", got, ok)
	}
}
