// Package bundle defines what one collected crash is: the files it holds, how
// they are named inside a store, and the versioned metadata.json schema that
// later tools, scripts and SREs rely on. docs/metadata.md documents the schema.
package bundle

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode/utf8"
)

// Schema is the version written into every metadata.json. It changes only when
// a field changes meaning or disappears; new optional fields keep it.
const Schema = 1

// Names of the well-known files of a bundle, relative to the bundle's root.
// Captured executables and libraries live under SysrootDir at their original
// absolute paths, and /proc texts under ProcDir, so that a reader can tell
// every file's role from its name alone.
const (
	MetadataFile = "metadata.json"
	// ContainerLog is the end of the container's log, when it has one.
	ContainerLog = "container.log"
	// StderrLog is the end of the crasher's standard error, when that
	// was a regular file its user owns (a host process's log).
	StderrLog  = "stderr.log"
	CoreFile   = "core.zst"
	SysrootDir = "sysroot"
	ProcDir    = "proc"
)

// HsErrLog names a JVM's fatal error log, in its working directory and in
// the bundle: the JVM names it by its pid in its own namespace.
func HsErrLog(nsPID int) string { return fmt.Sprintf("hs_err_pid%d.log", nsPID) }

// ProcTexts are the /proc/PID files every bundle keeps under ProcDir. They
// are small and exist only while the kernel holds the crashed process.
// EnvironText is kept too when configured: environments often hold secrets.
var ProcTexts = []string{"cmdline", "status", "maps", "limits", "cgroup", "mountinfo", "auxv"}

// CoreFrameBytes is how much raw core one zstd frame of CoreFile holds at
// most: the helper ends a frame and starts the next at each multiple, so a
// pull interrupted after a frame continues from there (a frame depends on
// nothing before it). Older bundles are a single frame.
const CoreFrameBytes = 64 << 20

// EnvironText is /proc/PID/environ, kept only when configured.
const EnvironText = "environ"

// Metadata is the content of metadata.json. Keys are snake_case and stable:
// later issues add sections but never rename one.
type Metadata struct {
	Schema int       `json:"schema"`
	ID     string    `json:"id"`
	Time   time.Time `json:"time"`
	Node   string    `json:"node"`

	// PID is the crasher's pid in the initial pid namespace (%P), NSPID its
	// pid inside its own namespace, TID the thread that took the signal (%I).
	PID   int `json:"pid"`
	NSPID int `json:"ns_pid,omitempty"`
	TID   int `json:"tid,omitempty"`

	// Comm is the kernel's task name (%e). Names are attacker-chosen bytes:
	// when they are not valid UTF-8, Comm is a lossy rendering and CommRaw
	// holds the exact bytes (base64 in JSON).
	Comm    string   `json:"comm"`
	CommRaw []byte   `json:"comm_raw,omitempty"`
	Exe     string   `json:"exe,omitempty"`
	ExeRaw  []byte   `json:"exe_raw,omitempty"`
	Cmdline []string `json:"cmdline,omitempty"`

	UID        int    `json:"uid"`
	GID        int    `json:"gid"`
	Signal     int    `json:"signal"`
	SignalName string `json:"signal_name"`
	// Dumpable is the kernel's %d: 1 for ordinary processes, 2 when the core
	// of a setuid process was dumped under suid_dumpable=2.
	Dumpable int `json:"dumpable,omitempty"`
	// Cgroup is the crasher's cgroup v2 path (the "0::" line of
	// /proc/PID/cgroup), or its first v1 path on v1-only hosts.
	Cgroup string `json:"cgroup,omitempty"`

	Core  Core   `json:"core"`
	Files []File `json:"files"`

	// Container, Pod and Workload say whose crash it is, from the
	// crasher's cgroup and the container runtime's CRI API;
	// IdentitySource says which ("cri", "cgroup" or "none") and
	// IdentityReason why not more.
	Container      *Container `json:"container,omitempty"`
	Pod            *Pod       `json:"pod,omitempty"`
	Workload       *Workload  `json:"workload,omitempty"`
	IdentitySource string     `json:"identity_source,omitempty"`
	IdentityReason string     `json:"identity_reason,omitempty"`

	// EBPF is what the observer saw of the fatal signal, when the agent
	// ran; Freeze what the agent did to the crasher's container.
	EBPF   *EBPF   `json:"ebpf,omitempty"`
	Freeze *Freeze `json:"freeze,omitempty"`

	// Backtrace is the crashed thread's stack, innermost first; Title
	// names the crash in one line ("SIGSEGV in parse_header (libfoo.so)");
	// Signature identifies the bug: a hash of the executable's build-id
	// (or name), the signal and the top frames once abort, raise,
	// assertion and runtime frames are dropped.
	Backtrace []Frame   `json:"backtrace,omitempty"`
	Title     string    `json:"title,omitempty"`
	Signature string    `json:"signature,omitempty"`
	Analysis  *Analysis `json:"analysis,omitempty"`
	// Dedup is set when other crashes of the same bug were folded into
	// one stored core.
	Dedup *Dedup `json:"dedup,omitempty"`

	// Collector describes the helper's own run, so that an SRE can see what
	// collecting this crash cost the node.
	Collector Collector `json:"collector"`

	// Upload is the outbox's record of failed attempts to upload this
	// bundle to the object store; nil until one failed.
	Upload *Upload `json:"upload,omitempty"`

	// Warnings lists what the helper could not capture and why. A bundle with
	// warnings is still complete in the sense that nothing more could be kept.
	Warnings []string `json:"warnings,omitempty"`
}

// Upload counts a bundle's failed uploads, so that one the object store
// refuses for good is set aside (Quarantined) instead of blocking every
// later bundle of its node, and says why.
type Upload struct {
	// Failures counts every failed attempt; Permanent those the store
	// refused for reasons of the bundle itself, which no retry can change.
	Failures  int    `json:"failures"`
	Permanent int    `json:"permanent"`
	LastError string `json:"last_error,omitempty"`
	// Quarantined is set after upload.quarantine_after permanent
	// failures: the uploader passes over the bundle, which stays in the
	// outbox until retention removes it or `corecatch upload
	// --retry-quarantined` tries it again.
	Quarantined bool `json:"quarantined,omitempty"`
}

// Container is the crasher's container.
type Container struct {
	ID      string `json:"id"`
	Name    string `json:"name,omitempty"`
	Image   string `json:"image,omitempty"`
	Runtime string `json:"runtime,omitempty"`
}

// Pod is the crasher's Kubernetes pod.
type Pod struct {
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	UID       string `json:"uid,omitempty"`
	// Labels are the pod's own labels (kubelet's io.kubernetes.* ones
	// left out), which alerts are routed by.
	Labels map[string]string `json:"labels,omitempty"`
	// Annotations are the pod's corecatch.io/ annotations, which chose what
	// was done with its crash (config.AnnotationCollect, ...).
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Scope is what config.Pods.Policy decides by: the pod's namespace and
// annotations; empty for a process in no pod (p nil).
func (p *Pod) Scope() (namespace string, annotations map[string]string) {
	if p == nil {
		return "", nil
	}
	return p.Namespace, p.Annotations
}

// Workload is what owns the pod: kind Deployment, StatefulSet, DaemonSet,
// Job, CronJob, or "unknown" with the pod's name when it cannot be told.
type Workload struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// Identity sources.
const (
	IdentityCRI    = "cri"
	IdentityCgroup = "cgroup"
	IdentityNone   = "none"
)

// EBPF is the observer's record of the signal that killed the process,
// taken in the dying task before the core streamed.
type EBPF struct {
	Time      time.Time `json:"time"`
	Signal    int       `json:"signal"`
	SiCode    int       `json:"si_code"`
	FaultAddr string    `json:"fault_addr"`
	SenderPID int       `json:"sender_pid,omitempty"`
	// CgroupID is the crasher's cgroup v2 id at the signal (the helper may
	// see it in the freezer's holding cgroup later); CgroupV1ID the v1
	// freezer cgroup's.
	CgroupID   uint64   `json:"cgroup_id"`
	CgroupV1ID uint64   `json:"cgroup_v1_id,omitempty"`
	Stack      []string `json:"stack,omitempty"`
	// LatencyMS is from the signal's delivery to the helper's start.
	LatencyMS float64 `json:"latency_ms"`
}

// Freeze says whether the agent froze the crasher's container while its
// core streamed, and why not when it did not.
type Freeze struct {
	Frozen bool   `json:"frozen"`
	Reason string `json:"reason,omitempty"`
	Cgroup string `json:"cgroup,omitempty"`
	// LatencyMS is from the signal to the container frozen; DurationMS
	// how long it stayed frozen.
	LatencyMS  float64 `json:"latency_ms,omitempty"`
	DurationMS float64 `json:"duration_ms,omitempty"`
}

// Core describes the core dump stream and what of it was kept.
type Core struct {
	// RawBytes is every byte the kernel sent, kept or drained.
	RawBytes int64 `json:"raw_bytes"`
	// KeptBytes is the prefix of the raw stream that core.zst holds.
	KeptBytes int64 `json:"kept_bytes"`
	// ExpectedBytes is the size the core's ELF program headers promise, or 0
	// when the stream did not start with a readable ELF header.
	ExpectedBytes int64 `json:"expected_bytes,omitempty"`
	// StoredBytes is the size of core.zst.
	StoredBytes int64  `json:"stored_bytes"`
	Compression string `json:"compression"`
	// Truncated is true whenever core.zst holds less than a whole core.
	Truncated      bool   `json:"truncated"`
	TruncateReason string `json:"truncate_reason,omitempty"`
	// RlimitCore is the crasher's RLIMIT_CORE (%c), recorded always and
	// honoured only when collect.honor_rlimit is set. -1 means unlimited.
	RlimitCore int64 `json:"rlimit_core"`
}

// Reasons a core is truncated or absent. They are stable strings so that
// metrics and scripts can match on them.
const (
	ReasonMaxCoreBytes = "max_core_bytes"
	ReasonRlimit       = "rlimit"
	ReasonShort        = "short"
	ReasonDiskFull     = "disk_full"
	ReasonQuota        = "quota"
	ReasonError        = "error"
	// ReasonMissing marks a crash the observer saw whose core never
	// arrived: the kernel skipped the dump (core_pipe_limit reached, a
	// non-dumpable process, RLIMIT_CORE of 1), the process was killed
	// before it began, or the helper failed. The bundle holds metadata only.
	ReasonMissing = "missing"
	// ReasonDedup marks a crash whose bug already has a stored core
	// (Dedup.Of): its core was drained, its metadata and backtrace kept.
	ReasonDedup = "dedup"
	// ReasonRateLimit marks a core drained because the node stored its
	// allowance of full cores (collect.max_cores_per_minute) or ran its
	// allowance of concurrent collections.
	ReasonRateLimit = "rate_limit"
	// ReasonBusy marks a crash the agent refused before its dump because
	// it held collect.backlog crashes already.
	ReasonBusy = "busy"
	// ReasonPodPolicy marks a core drained because the pod's annotation or
	// its namespace's default (config.Pods) said corecatch.io/collect:
	// false; metadata and the backtrace are kept.
	ReasonPodPolicy = "pod_policy"
)

// Frame is one frame of a backtrace. Module and Offset (the module's
// virtual address, as "module+offset") are known whenever the address is in
// a mapped file; Function when a symbol covers it; File and Line when the
// module has debug information and a full unwinder ran.
type Frame struct {
	Function string `json:"function,omitempty"`
	Module   string `json:"module,omitempty"`
	Offset   uint64 `json:"offset"`
	BuildID  string `json:"build_id,omitempty"`
	File     string `json:"file,omitempty"`
	Line     int    `json:"line,omitempty"`
}

// String renders a frame as SREs read it: "parse_header (libfoo.so+0x1c40)".
func (f Frame) String() string {
	where := fmt.Sprintf("%s+0x%x", f.Module, f.Offset)
	if f.Module == "" {
		where = fmt.Sprintf("0x%x", f.Offset)
	}
	s := where
	if f.Function != "" {
		s = f.Function + " (" + where + ")"
	}
	if f.File != "" {
		s += fmt.Sprintf(" at %s:%d", f.File, f.Line)
	}
	return s
}

// Thread is one thread's backtrace, innermost frame first.
type Thread struct {
	// ID is the thread's id (the kernel's LWP).
	ID     int     `json:"id"`
	Frames []Frame `json:"frames"`
}

// Analysis is what corecatch learnt of where the crash happened.
type Analysis struct {
	// Unwinder says where the backtrace comes from: "frame-pointers" (the
	// helper's own walk of the crashed thread, no debugger needed) or
	// "gdb" (a full unwind of the stored core); Reason why not gdb.
	Unwinder string `json:"unwinder"`
	Reason   string `json:"reason,omitempty"`
	// Pending is set while gdb's unwind of the published bundle runs: the
	// metadata is rewritten when it ends.
	Pending bool `json:"pending,omitempty"`
	// Threads holds every thread's backtrace when the full unwinder ran
	// and the process had few enough threads.
	Threads []Thread `json:"threads,omitempty"`
	// Script is the interpreted or JIT-compiled program's stack,
	// innermost first: Python's (module "python": file, line, function)
	// when gdb had the interpreter's helpers (Debian's python3.x-dbg)
	// where the agent runs; a JVM's Java frames (module "java") from its
	// hs_err log; the JavaScript stack (module "javascript") Node.js
	// printed to the log the bundle holds.
	Script []Frame `json:"script,omitempty"`
	// Warnings says which frames are unnamed because a file the crashed
	// container controls could not be read within the analysis limits
	// (a symbol table too large, a section that inflates too far).
	Warnings []string `json:"warnings,omitempty"`
	// Attempts counts the agent's starts of the full unwind, recorded
	// before each: a bundle whose analysis never ends (the agent died in
	// it) is given up after a few, not retried at every start.
	Attempts int `json:"attempts,omitempty"`
}

// Dedup links a crash to the stored core of the same bug: Of is that
// bundle's id, Count how many crashes of the bug the window has seen so far
// (in the first bundle: all of them, kept up to date by the agent).
type Dedup struct {
	Of    string    `json:"of,omitempty"`
	Count int       `json:"count"`
	Key   string    `json:"key"`
	Until time.Time `json:"until"`
}

// File is one captured file: the executable, a mapped library or another
// mapped object.
type File struct {
	// Path is the absolute path the crasher saw (its mount namespace), which
	// is also the file's place under sysroot/ when it was captured.
	Path    string `json:"path"`
	PathRaw []byte `json:"path_raw,omitempty"`
	Size    int64  `json:"size"`
	// DataBytes is what the captured copy holds outside holes: the part
	// charged to collect.max_files_total_bytes (a sparse file's holes stay
	// holes in the bundle and cost nothing).
	DataBytes int64  `json:"data_bytes,omitempty"`
	BuildID   string `json:"build_id,omitempty"`
	SHA256    string `json:"sha256,omitempty"`
	// Role is "exe" for the executable and "mapped" for other mappings.
	Role string `json:"role"`
	// Deleted is true when the file had been unlinked before the crash; the
	// bundle still holds its bytes, read through the mapping itself.
	Deleted bool `json:"deleted,omitempty"`
	// Aliases are other absolute names the crasher's loader used for this
	// file (the link map's "/lib/..." for a mapped "/usr/lib/..." on
	// merged-/usr systems). pull recreates them as symlinks in sysroot/.
	// AliasesRaw holds their exact bytes when any is not valid UTF-8.
	Aliases    []string `json:"aliases,omitempty"`
	AliasesRaw [][]byte `json:"aliases_raw,omitempty"`
	// Stored is the bundle-relative name of the captured bytes (valid
	// UTF-8 whatever the path's bytes); empty when the file was not
	// captured, in which case Skipped says why.
	Stored  string `json:"stored,omitempty"`
	Skipped string `json:"skipped,omitempty"`
}

// RawPath returns the file's path as the crasher's bytes spelt it.
func (f *File) RawPath() string {
	if f.PathRaw != nil {
		return string(f.PathRaw)
	}
	return f.Path
}

// AddAlias records another name of the file, keeping exact bytes.
func (f *File) AddAlias(name string) {
	for _, a := range f.AliasNames() {
		if a == name {
			return
		}
	}
	if name == f.RawPath() {
		return
	}
	text, raw := Text([]byte(name))
	if raw != nil && f.AliasesRaw == nil {
		for _, a := range f.Aliases {
			f.AliasesRaw = append(f.AliasesRaw, []byte(a))
		}
	}
	f.Aliases = append(f.Aliases, text)
	if f.AliasesRaw != nil {
		f.AliasesRaw = append(f.AliasesRaw, []byte(name))
	}
}

// AliasNames returns the file's aliases as exact bytes.
func (f *File) AliasNames() []string {
	if f.AliasesRaw == nil {
		return f.Aliases
	}
	names := make([]string, len(f.AliasesRaw))
	for i, a := range f.AliasesRaw {
		names[i] = string(a)
	}
	return names
}

// Collector records the helper run that produced the bundle.
type Collector struct {
	Version string `json:"version"`
	// DurationSeconds is the helper's wall time, from start to the bundle's
	// publication. HeldSeconds is the part during which the kernel held the
	// crashed process (until the helper closed the core pipe).
	DurationSeconds float64 `json:"duration_seconds"`
	HeldSeconds     float64 `json:"held_seconds"`
	MaxRSSBytes     int64   `json:"max_rss_bytes"`
	// CPUSeconds is the helper's user plus system CPU time: what a crash
	// costs the node, and what a crash storm multiplies.
	CPUSeconds float64 `json:"cpu_seconds"`
	// DiskWriteBytes is what the helper caused to be written to storage
	// (/proc/self/io write_bytes) up to the bundle's publication.
	DiskWriteBytes int64 `json:"disk_write_bytes"`
	// Missing names what the helper had not read when
	// collect.capture_timeout ended the capture (a /proc text, a mapped
	// file, the frame-pointer walk): a read of the crasher's files or
	// memory that never returned, such as on a FUSE filesystem whose
	// server does not answer.
	Missing []string `json:"missing,omitempty"`
}

// Text returns a valid UTF-8 rendering of raw bytes and, when the bytes are
// not valid UTF-8, a copy of them to keep alongside the rendering, so that
// metadata never silently loses an attacker-chosen name.
func Text(raw []byte) (string, []byte) {
	if utf8.Valid(raw) {
		return string(raw), nil
	}
	return string([]rune(string(raw))), append([]byte(nil), raw...)
}

// Decode parses a metadata.json document and rejects schemas newer than this
// binary understands, so that an old client never misreads a new bundle.
func Decode(data []byte) (*Metadata, error) {
	var m Metadata
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("parse %s: %w", MetadataFile, err)
	}
	if m.Schema > Schema {
		return nil, fmt.Errorf("%s has schema %d, newer than this corecatch understands (%d): upgrade corecatch", MetadataFile, m.Schema, Schema)
	}
	return &m, nil
}

// MaxMetadataBytes bounds what a reader takes of one metadata.json. A
// bucket is shared by every node, so any one of them (or anyone who can
// write to it) can put a metadata.json there: without a bound, one huge
// object would make every reader allocate it. Real ones hold a few KiB to a
// few hundred (every thread's backtrace of a 64-thread process).
const MaxMetadataBytes = 4 << 20

// ReadMetadata reads the metadata.json of the bundle stored under id from
// r: at most MaxMetadataBytes, and only when it names that same bundle, so
// that a listing never trusts an id (which decides paths, keys and the
// listing's order) that its key does not back.
func ReadMetadata(id string, r io.Reader) (*Metadata, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxMetadataBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxMetadataBytes {
		return nil, fmt.Errorf("%s is larger than %s: not one corecatch wrote (delete the bundle)", MetadataFile, HumanBytes(MaxMetadataBytes))
	}
	m, err := Decode(data)
	if err != nil {
		return nil, err
	}
	if m.ID != id {
		return nil, fmt.Errorf("%s names bundle %s, not the bundle it is stored as: a misplaced or forged object (delete the bundle)", MetadataFile, strconv.Quote(m.ID))
	}
	return m, nil
}

// Encode renders metadata.json with stable indentation.
func Encode(m *Metadata) ([]byte, error) {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", MetadataFile, err)
	}
	return append(data, '\n'), nil
}

// HumanBytes renders a size as SREs read it in listings and alerts: 512B,
// 1.5GiB.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
