package collector

import (
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
)

// The decisions of a collection: what becomes of a crash, given its facts.
// Each is a function of plain values (the facts, and for the checks that
// count a crash in the spool, the calls that make them), so every rule is
// tested without a kernel, a crasher or root (decide_test.go); the phases
// in crash_linux.go gather the facts and carry the verdicts out.

// verdict is what becomes of a crash's core.
type verdict struct {
	// keep streams the core into the bundle, up to limit raw bytes
	// (negative: all of it).
	keep  bool
	limit int64
	// reason is the core's truncation reason when limit cuts it, or why
	// it is not kept at all (a bundle.Reason*).
	reason string
	// light keeps metadata, the /proc texts and the backtrace only: the
	// files a debugger needs go with the core they would serve.
	light bool
	// meta keeps the metadata alone (a duplicate: the bug's core and
	// files are in the bundle its dedup.of names), so that a refused
	// duplicate is let go as soon as it is decided.
	meta bool
	// warning, when set, goes into the bundle's warnings.
	warning string
}

// coreLimit is how many raw bytes of a core are kept (negative: all), and
// the truncation reason when that cuts it: collect.max_core_bytes (0: the
// whole core), or the crasher's RLIMIT_CORE (-1: unlimited) when
// collect.honor_rlimit and it is lower.
func coreLimit(c config.Collect, rlimit int64) (int64, string) {
	limit, reason := int64(-1), bundle.ReasonMaxCoreBytes
	if c.MaxCoreBytes.Bytes > 0 {
		limit = c.MaxCoreBytes.Bytes
	}
	if c.HonorRlimit && rlimit >= 0 && (limit < 0 || rlimit < limit) {
		limit, reason = rlimit, bundle.ReasonRlimit
	}
	return limit, reason
}

// decideCore says whether a crash's core is kept. A limit of 0 keeps none
// and refuses nothing (the files are kept). Then, in this order, each of
// these refuses it, light: the pod's policy (no core: secrets in its
// memory), the intake's own refusal (refuse: bundle.ReasonBusy), the
// crash storm's (storm: a duplicate within its window, or over the rate),
// and no free collection slot (slot). storm and slot are asked only when
// everything before keeps the core: they count the crash (its dedup
// record, the per-minute allowance) and take a slot it then holds.
func decideCore(limit int64, limitReason string, pol config.PodPolicy, refuse string, storm func() string, slot func() bool) verdict {
	v := verdict{keep: limit != 0, limit: limit, reason: limitReason}
	if !v.keep {
		return v
	}
	if !pol.Collect {
		return refused(bundle.ReasonPodPolicy, "core not kept: "+pol.Why)
	}
	reason := refuse
	if reason == "" {
		reason = storm()
	}
	if reason == "" && !slot() {
		reason = bundle.ReasonRateLimit
	}
	if reason != "" {
		return refused(reason, "")
	}
	return v
}

// refused is the verdict of a core not kept for reason; a duplicate's
// keeps only its metadata.
func refused(reason, warning string) verdict {
	return verdict{reason: reason, light: true, meta: reason == bundle.ReasonDedup, warning: warning}
}

// unanswered is the verdict once the kernel took no keep answer: it dumps
// nothing, so nothing of the core is kept and the record says why.
func (v verdict) unanswered() verdict {
	return verdict{reason: bundle.ReasonError, light: v.light, meta: v.meta}
}

// answerTime is when an intake that must hear the decision before the
// kernel dumps (the coredump socket: Options.Answer) is told it.
type answerTime int

const (
	// answerNone: the pipe; the kernel dumps into it whatever is decided.
	answerNone answerTime = iota
	// answerFirst: no eBPF stack to decide on; the core is taken at once
	// and decided on its head, a refused one closed when decided.
	answerFirst
	// answerOnStack: decided on the eBPF event's stack, before a byte is
	// dumped; a refused core never streams.
	answerOnStack
)

// answerTimeFor is when an intake that answers (or not) with a stack of
// that many frames hears the decision.
func answerTimeFor(answers bool, stack int) answerTime {
	switch {
	case !answers:
		return answerNone
	case stack > 0:
		return answerOnStack
	}
	return answerFirst
}

// crashCgroup is the cgroup that names a crash's container: the one the
// agent's freeze found it in, before any move, when it read it (freeze, nil
// without an agent), else the process's own (proc reads /proc/PID/cgroup).
func crashCgroup(freeze *bundle.Freeze, proc func() string) string {
	if freeze != nil && freeze.Cgroup != "" {
		return freeze.Cgroup
	}
	return proc()
}

// thawAfter says whether the agent is asked to thaw the crasher's
// container once the collection let go of the process: when it froze it,
// or when its freeze was still going on as the crash was decided
// (pending), and the release then takes the freeze's record.
func thawAfter(freeze *bundle.Freeze, pending bool) bool {
	return pending || freeze != nil && freeze.Frozen
}

// heldFor is how long the kernel held the crasher for this collection:
// until it was released before its dump (released), else until now.
func heldFor(start, released, now time.Time) time.Duration {
	if !released.IsZero() {
		return released.Sub(start)
	}
	return now.Sub(start)
}

// analysisState says whether the agent will unwind a published core with
// gdb (pending), or why it will not (reason; "" leaves the frame-pointer
// walk's). A core not kept, or with nothing stored, has nothing to unwind.
func analysisState(kept bool, stored int64, gdb string, agent, updatable bool) (pending bool, reason string) {
	switch {
	case !kept || stored == 0:
		return false, ""
	case gdb == "":
		return false, "the full unwind is off (analysis.gdb)"
	case !agent:
		return false, "no agent ran to unwind the core with gdb"
	case !updatable:
		return false, "the store cannot amend metadata"
	}
	return true, ""
}

// dedupKey names a crash's bug in the node's dedup records, with the
// window its first core stands for it (0: no dedup): its workload's when
// it ran in one, else its executable's (exeID), and its signature.
func dedupKey(d config.Dedup, pod *bundle.Pod, workload *bundle.Workload, exeID, signature string) (string, time.Duration) {
	ns := ""
	if pod != nil {
		ns = pod.Namespace
	}
	scope := exeID
	if workload != nil {
		scope = ns + "/" + workload.Kind + "/" + workload.Name
	}
	return scope + " " + signature, d.WindowFor(ns)
}

// dedupRecord is one bug's window: the bundle that keeps its core and how
// many crashes the window has seen.
type dedupRecord struct {
	First string    `json:"first"`
	Count int       `json:"count"`
	Until time.Time `json:"until"`
}

// next counts crash id of the record's bug at now: one more in the window
// that runs, or the first of a new one, held by the crash holder names
// (this one, or with cluster-wide dedup another node's). A holder of ""
// (rate-limited: nobody keeps a core) opens no window: next returns a
// record of count 0 and holder's error.
func (rec dedupRecord) next(id string, window time.Duration, now time.Time, holder func() (string, error)) (dedupRecord, error) {
	if rec.First != "" && now.Before(rec.Until) {
		rec.Count++
		return rec, nil
	}
	first, err := holder()
	if first == "" {
		return dedupRecord{}, err
	}
	// A window claimed on another node ends with that node's window.
	rec = dedupRecord{First: first, Count: 1, Until: windowEnd(now, window)}
	if first == id {
		rec.Until = now.Add(window)
	}
	return rec, nil
}

// windowEnd is the end of the window now falls in, windows aligned on
// multiples of their length since the Unix epoch, as every node aligns
// them (store.S3.Claim).
func windowEnd(now time.Time, window time.Duration) time.Time {
	w := int64(window)
	return time.Unix(0, (now.UnixNano()/w+1)*w)
}

// windowHolder names the crash (id) that keeps the core of a bug's new
// window on this node: the cluster's holder when claim (nil: no
// cluster-wide dedup) names another crash, else this one when allow (the
// node's per-minute allowance) lets its core in, else nobody (""). A
// claim that fails leaves the decision to this node, and warn says so.
func windowHolder(id string, claim func() (string, error), allow func() (bool, error), warn func(string)) (string, error) {
	if claim != nil {
		h, err := claim()
		if err != nil {
			warn("cluster-wide dedup unavailable, deduplicated on this node only: " + err.Error())
		} else if h != id {
			return h, nil
		}
	}
	ok, err := allow()
	if !ok {
		return "", err
	}
	return id, err
}

// dedupOutcome turns a crash's place in its bug's window (the holder of
// (of, "" when this crash), its ordinal count) into the reason its core is
// not kept ("": kept) and the bundle's dedup section. Count 0 is a first
// crash over the rate: no window, no section.
func dedupOutcome(key, of string, count int, until time.Time) (string, *bundle.Dedup) {
	if count == 0 {
		return bundle.ReasonRateLimit, nil
	}
	d := &bundle.Dedup{Of: of, Count: count, Key: key, Until: until}
	if of != "" {
		return bundle.ReasonDedup, d
	}
	return "", d
}

// admit takes one whole core at now into the per-minute allowance, given
// the times (UnixNano) of those taken before: the ones still within the
// minute, with now's when it fits.
func admit(times []int64, perMinute int, now time.Time) ([]int64, bool) {
	keep := times[:0]
	for _, t := range times {
		if now.Sub(time.Unix(0, t)) < time.Minute {
			keep = append(keep, t)
		}
	}
	if len(keep) >= perMinute {
		return keep, false
	}
	return append(keep, now.UnixNano()), true
}
