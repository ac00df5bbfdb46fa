// Package metrics is what the agent tells Prometheus: the node's crashes
// and fatal signals, what became of their cores, and corecatch's own health
// (its losses and latencies are metrics too). Labels stay bounded: pod names
// are not labels, workloads are; the node comes from the scrape target.
package metrics

import (
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// DropReasons are the values of corecatch_cores_dropped_total's reason
// label. Each exists at 0 from the start, so that an alert on increase()
// sees the first drop.
var DropReasons = []string{"dedup", "rate_limit", "busy", "too_large", "disk_full", "rlimit", "missing", "pod_policy", "error"}

// DefaultMaxExeLabels is how many distinct executable names the exe label
// takes in one agent's life, by default, before the rest count as
// OtherExe; MaxExeLabelBytes bounds one name.
const (
	DefaultMaxExeLabels = 100
	MaxExeLabelBytes    = 64
	OtherExe            = "other"
)

// Metrics holds the agent's collectors.
type Metrics struct {
	Registry *prometheus.Registry

	// The exe label's values seen so far, and how many may be: a crashing
	// process picks its own name, so without a bound a container could
	// make a series per crash.
	exeMu   sync.Mutex
	exes    map[string]struct{}
	maxExes int

	crashes        *prometheus.CounterVec
	fatalSignals   *prometheus.CounterVec
	coresStored    prometheus.Counter
	coresDropped   *prometheus.CounterVec
	coreBytes      *prometheus.CounterVec
	collectSeconds prometheus.Histogram
	freezeLatency  prometheus.Histogram
	freezeDuration prometheus.Histogram
	lastCrash      prometheus.Gauge
	storeOps       *prometheus.CounterVec
	uploadBacklog  prometheus.Gauge
	quarantined    prometheus.Counter
	quarantinedNow prometheus.Gauge
	notifications  *prometheus.CounterVec
	dedupCluster   prometheus.Gauge
	intake         *prometheus.GaugeVec
}

// New registers every corecatch metric, and the Go and process collectors,
// in a registry of its own. ebpfLost reads the observer's loss counters
// (nil: no observer).
func New(version string, ebpfLost func() float64) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry(), exes: map[string]struct{}{}, maxExes: DefaultMaxExeLabels}
	register := func(c prometheus.Collector) { m.Registry.MustRegister(c) }
	m.crashes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "corecatch_crashes_total",
		Help: "Core-dumping crashes collected on this node, deduplicated or not.",
	}, []string{"namespace", "workload", "container", "exe", "signal"})
	m.fatalSignals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "corecatch_fatal_signals_total",
		Help: "Process-fatal signals the eBPF observer saw, kills without a core (SIGKILL, OOM kills) included.",
	}, []string{"namespace", "workload", "container", "kind", "signal"})
	m.coresStored = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "corecatch_cores_stored_total",
		Help: "Cores stored whole.",
	})
	m.coresDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "corecatch_cores_dropped_total",
		Help: "Cores not stored or stored truncated, by reason.",
	}, []string{"reason"})
	m.coreBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "corecatch_core_bytes_total",
		Help: "Core bytes the kernel sent (kind=raw) and corecatch stored compressed (kind=stored).",
	}, []string{"kind"})
	m.collectSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "corecatch_collect_duration_seconds",
		Help:    "Pipe helper wall time per crash, from its start to the bundle's publication.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
	})
	m.freezeLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "corecatch_freeze_latency_seconds",
		Help:    "Time from a fatal signal to its container frozen.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12),
	})
	m.freezeDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "corecatch_freeze_duration_seconds",
		Help:    "How long a crashing container stayed frozen.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
	})
	m.lastCrash = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "corecatch_last_crash_timestamp_seconds",
		Help: "Unix time of the last crash collected on this node.",
	})
	m.storeOps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "corecatch_store_operations_total",
		Help: "Operations of the agent on the bundle store (put, delete, update, upload, compact: of an S3 store's index), by result.",
	}, []string{"op", "result"})
	m.uploadBacklog = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "corecatch_upload_backlog_bytes",
		Help: "Bytes of bundles waiting in the spool for upload to the object store; 0 with a local store.",
	})
	m.quarantined = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "corecatch_bundles_quarantined_total",
		Help: "Bundles set aside in the outbox after upload.quarantine_after permanent upload failures (the object store refuses them for good); later bundles upload regardless.",
	})
	m.quarantinedNow = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "corecatch_upload_quarantined_bundles",
		Help: "Bundles waiting set aside in the outbox, never uploaded: see their metadata's upload.last_error.",
	})
	m.notifications = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "corecatch_notifications_total",
		Help: "Notification attempts by sink (feishu/NAME, alertmanager) and result: ok, error (retried), rejected, dropped (queue full, or over its byte bounds), muted.",
	}, []string{"sink", "result"})
	m.dedupCluster = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "corecatch_dedup_cluster_wide",
		Help: "1 when deduplication is cluster-wide (an S3 store that honours conditional writes), 0 when each node deduplicates alone.",
	})
	m.intake = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "corecatch_intake_info",
		Help: "1 for the way cores reach corecatch on this node (mode socket: the kernel's coredump socket; pipe: the core_pattern helper), 0 for the other.",
	}, []string{"mode"})
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "corecatch_build_info",
		Help:        "The running corecatch's version, as a label; always 1.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	info.Set(1)
	for _, c := range []prometheus.Collector{m.crashes, m.fatalSignals, m.coresStored, m.coresDropped, m.coreBytes,
		m.collectSeconds, m.freezeLatency, m.freezeDuration, m.lastCrash, m.storeOps, m.uploadBacklog, m.quarantined, m.quarantinedNow, m.notifications, m.dedupCluster, m.intake, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		register(c)
	}
	if ebpfLost != nil {
		register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "corecatch_ebpf_events_lost_total",
			Help: "eBPF events lost: the kernel's ring buffer was full, or the agent's reader was too slow.",
		}, ebpfLost))
	}
	for _, r := range DropReasons {
		m.coresDropped.WithLabelValues(r)
	}
	for _, mode := range []string{"socket", "pipe"} {
		m.intake.WithLabelValues(mode)
	}
	for _, k := range []string{"raw", "stored"} {
		m.coreBytes.WithLabelValues(k)
	}
	for _, op := range []string{"put", "delete", "update", "upload", "compact"} {
		for _, r := range []string{"ok", "error"} {
			m.storeOps.WithLabelValues(op, r)
		}
	}
	return m
}

// Bundle counts one published bundle.
func (m *Metrics) Bundle(b *bundle.Metadata) {
	ns, workload, container := labels(b.Pod, b.Workload, b.Container)
	m.crashes.WithLabelValues(ns, workload, container, m.exeLabel(b.Exe), b.SignalName).Inc()
	m.lastCrash.Set(float64(b.Time.Unix()))
	m.coreBytes.WithLabelValues("raw").Add(float64(b.Core.RawBytes))
	m.coreBytes.WithLabelValues("stored").Add(float64(b.Core.StoredBytes))
	switch reason := dropReason(b.Core); {
	case reason == "":
		m.coresStored.Inc()
	default:
		m.coresDropped.WithLabelValues(reason).Inc()
	}
	if b.Collector.DurationSeconds > 0 {
		m.collectSeconds.Observe(b.Collector.DurationSeconds)
	}
	if f := b.Freeze; f != nil && f.Frozen {
		m.freezeLatency.Observe(f.LatencyMS / 1000)
		if f.DurationMS > 0 {
			m.freezeDuration.Observe(f.DurationMS / 1000)
		}
	}
}

// LimitExeLabels sets how many distinct executable names the exe label
// takes before the rest count as OtherExe (config: metrics.max_exe_labels).
func (m *Metrics) LimitExeLabels(n int) {
	m.exeMu.Lock()
	defer m.exeMu.Unlock()
	m.maxExes = n
}

// exeLabel returns the exe label of an executable path: its base name
// (paths differ between images of one program), printable and at most
// MaxExeLabelBytes long, or OtherExe once the first maxExes names are
// taken.
func (m *Metrics) exeLabel(exe string) string {
	if i := strings.LastIndexByte(exe, '/'); i >= 0 {
		exe = exe[i+1:]
	}
	exe = printable(exe, MaxExeLabelBytes)
	m.exeMu.Lock()
	defer m.exeMu.Unlock()
	if _, ok := m.exes[exe]; ok {
		return exe
	}
	if len(m.exes) >= m.maxExes {
		return OtherExe
	}
	m.exes[exe] = struct{}{}
	return exe
}

// printable replaces what a terminal or a dashboard would not show as
// itself (control characters, invalid UTF-8) with '?', and cuts the result
// to at most max bytes on a rune boundary.
func printable(s string, max int) string {
	var b strings.Builder
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = '?'
		}
		if b.Len()+utf8.RuneLen(r) > max {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// dropReason maps a core's truncation to a drop reason, "" for a whole core.
func dropReason(c bundle.Core) string {
	switch c.TruncateReason {
	case "":
		return ""
	case bundle.ReasonMaxCoreBytes:
		return "too_large"
	case bundle.ReasonQuota, bundle.ReasonDiskFull:
		return "disk_full"
	case bundle.ReasonRlimit:
		return "rlimit"
	case bundle.ReasonMissing:
		return "missing"
	case bundle.ReasonDedup:
		return "dedup"
	case bundle.ReasonRateLimit:
		return "rate_limit"
	case bundle.ReasonBusy:
		return "busy"
	case bundle.ReasonPodPolicy:
		return "pod_policy"
	}
	return "error"
}

// StoreOp counts one store operation; err nil is a success.
func (m *Metrics) StoreOp(op string, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.storeOps.WithLabelValues(op, result).Inc()
}

// UploadBacklog sets the bytes of bundles waiting in the outbox.
func (m *Metrics) UploadBacklog(bytes int64) { m.uploadBacklog.Set(float64(bytes)) }

// BundleQuarantined counts one bundle set aside in the outbox.
func (m *Metrics) BundleQuarantined(*bundle.Metadata) { m.quarantined.Inc() }

// UploadQuarantined sets how many bundles wait set aside in the outbox.
func (m *Metrics) UploadQuarantined(n int) { m.quarantinedNow.Set(float64(n)) }

// Signal counts one fatal signal the observer saw, of kind core or fatal,
// in a container of pod (either may be nil).
func (m *Metrics) Signal(kind, signal string, pod *bundle.Pod, workload *bundle.Workload, container *bundle.Container) {
	ns, wl, ctr := labels(pod, workload, container)
	m.fatalSignals.WithLabelValues(ns, wl, ctr, kind, signal).Inc()
}

// labels renders identity as metric labels: namespace, workload
// ("Kind/name") and container name, empty when unknown.
func labels(pod *bundle.Pod, workload *bundle.Workload, container *bundle.Container) (string, string, string) {
	ns, wl, ctr := "", "", ""
	if pod != nil {
		ns = pod.Namespace
	}
	if workload != nil {
		wl = workload.Kind + "/" + workload.Name
	}
	if container != nil {
		ctr = container.Name
	}
	return ns, wl, ctr
}

// Notification counts one notification outcome of sink.
func (m *Metrics) Notification(sink, result string) {
	m.notifications.WithLabelValues(sink, result).Inc()
}

// Notifier creates the notification counters of every sink at 0, so that
// an alert on their increase sees the first failure, and exports how many
// notifications wait in each sink's queue, read by pending at each scrape.
func (m *Metrics) Notifier(sinks, results []string, pending func() map[string]int) {
	for _, s := range sinks {
		m.Sink(s, results)
	}
	m.Registry.MustRegister(&pendingCollector{pending: pending, desc: prometheus.NewDesc("corecatch_notifications_pending",
		"Notifications waiting in a sink's queue in the spool: the service is down, refusing, or rate-limiting.", []string{"sink"}, nil)})
}

// Sink creates the notification counters of one more sink at 0 (the Pod
// Events, which queue in memory, not in the spool).
func (m *Metrics) Sink(sink string, results []string) {
	for _, r := range results {
		m.notifications.WithLabelValues(sink, r)
	}
}

// pendingCollector reads the notification queues' lengths at scrape time.
type pendingCollector struct {
	pending func() map[string]int
	desc    *prometheus.Desc
}

func (c *pendingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *pendingCollector) Collect(ch chan<- prometheus.Metric) {
	for sink, n := range c.pending() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), sink)
	}
}

// Intake records which intake is in use: "socket" or "pipe".
func (m *Metrics) Intake(mode string) {
	m.intake.Reset()
	for _, other := range []string{"socket", "pipe"} {
		v := 0.0
		if other == mode {
			v = 1
		}
		m.intake.WithLabelValues(other).Set(v)
	}
}

// DedupClusterWide records whether deduplication spans the cluster.
func (m *Metrics) DedupClusterWide(on bool) {
	v := 0.0
	if on {
		v = 1
	}
	m.dedupCluster.Set(v)
}
