// Package config reads corecatch's one YAML file. Every command reads the same
// file, so the pipe helper the kernel starts and the SRE's commands agree on
// where bundles live and what is kept.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// DefaultPath is where commands look for the file when --config is not given.
const DefaultPath = "/etc/corecatch/config.yaml"

// Example is a fully commented config file with every default spelled out;
// `corecatch config example` prints it and a test checks it parses to
// Default().
//
//go:embed example.yaml
var Example string

// Config is the whole configuration.
type Config struct {
	// Store is the URL of the bundle store: file:///path or
	// s3://bucket/prefix.
	Store string `json:"store"`
	// Spool is the node-local state directory: install's saved sysctls, the
	// helper's config snapshot and the outbox of bundles waiting for
	// upload.
	Spool string `json:"spool"`
	// Socket is the agent's unix socket.
	Socket string `json:"socket"`
	// Intake is how cores reach corecatch: "socket", the kernel's
	// coredump socket (Linux 6.17+), where the agent decides on each
	// crash before it is dumped and takes the core itself; or "pipe", the
	// kernel runs `corecatch collect` for each crash. The agent falls back
	// to pipe where the kernel cannot take the socket's pattern.
	Intake string `json:"intake"`
	// CoredumpSocket is the host path (in the host's mount namespace) of
	// the socket the kernel connects to with intake socket.
	CoredumpSocket string `json:"coredump_socket"`
	// Node names this node in metadata; empty means the host name.
	Node      string    `json:"node"`
	Collect   Collect   `json:"collect"`
	Retention Retention `json:"retention"`
	Observer  Observer  `json:"observer"`
	Freeze    Freeze    `json:"freeze"`
	Identity  Identity  `json:"identity"`
	Pods      Pods      `json:"pods"`
	Notify    Notify    `json:"notify"`
	Analysis  Analysis  `json:"analysis"`
	Dedup     Dedup     `json:"dedup"`
	Host      Host      `json:"host"`
	S3        S3        `json:"s3"`
	Upload    Upload    `json:"upload"`
	Metrics   Metrics   `json:"metrics"`
}

// Metrics bounds what the agent exports to Prometheus where the crashing
// process, not the operator, picks a label's value.
type Metrics struct {
	// MaxExeLabels is how many distinct executable names the exe label of
	// corecatch_crashes_total takes in one agent's life; later names count
	// as "other", so that a container renaming its binary at each crash
	// cannot make a series per crash.
	MaxExeLabels int `json:"max_exe_labels"`
}

// Analysis bounds the full unwind (gdb) of each stored core; the helper's
// frame-pointer walk, which needs no debugger, always runs.
type Analysis struct {
	// GDB is gdb's name or path; "" turns the full unwind off.
	GDB string `json:"gdb"`
	// MaxCoreBytes skips the full unwind of larger cores (raw size): gdb
	// needs the core decompressed on disk.
	MaxCoreBytes Size `json:"max_core_bytes"`
	// Timeout and MaxMemory bound gdb; MaxThreads is the most threads
	// unwound one by one.
	Timeout    Duration `json:"timeout"`
	MaxMemory  Size     `json:"max_memory"`
	MaxThreads int      `json:"max_threads"`
	// DebuginfodURLs are debuginfod servers (space-separated, as
	// DEBUGINFOD_URLS, which applies when this is empty) gdb fetches the
	// debug info of stripped executables and libraries from, by build-id,
	// within the timeout and at most max_core_bytes a file.
	DebuginfodURLs string `json:"debuginfod_urls"`
	// RunAsUser and RunAsGroup are the unprivileged uid and gid gdb runs
	// as (without capabilities, with no_new_privs): it parses files the
	// crashed container wrote, from a copy of the bundle only that group
	// can read. A uid and gid of their own are better than nobody's,
	// which other daemons may share.
	RunAsUser  uint32 `json:"run_as_user"`
	RunAsGroup uint32 `json:"run_as_group"`
}

// Dedup keeps one core per bug: later crashes with the same signature in
// the same workload (or executable) within the window keep metadata and a
// backtrace, and their cores are drained.
type Dedup struct {
	// Window is how long the first core stands for its bug; 0 keeps
	// every core.
	Window Duration `json:"window"`
	// Namespaces override the window for pods of matching namespaces
	// (globs), first match first.
	Namespaces []NamespaceWindow `json:"namespaces"`
}

// NamespaceWindow is a dedup window for the namespaces a glob matches.
type NamespaceWindow struct {
	Namespace string   `json:"namespace"`
	Window    Duration `json:"window"`
}

// WindowFor returns the dedup window of a namespace ("" outside pods).
func (d Dedup) WindowFor(namespace string) time.Duration {
	for _, n := range d.Namespaces {
		if ok, _ := path.Match(n.Namespace, namespace); ok {
			return time.Duration(n.Window)
		}
	}
	return time.Duration(d.Window)
}

// Host says where the host's files are when the agent runs in a container.
// The kernel runs the core_pattern helper in the host's namespaces, so the
// pattern must name a binary at a host path, and the agent must reach the
// host's sysctls. Store, Spool, Socket and Identity.CRIEndpoint are paths
// both the helper and the agent open: a pod mounts each at its host path.
type Host struct {
	// BinDir, a host path, is where the agent copies its own binary for
	// the kernel to run (core_pattern names BinDir/corecatch). Empty: the
	// pattern runs the binary the agent or install was started from.
	BinDir string `json:"bin_dir"`
	// BinMount is where BinDir is mounted in the agent's container; empty:
	// at BinDir itself.
	BinMount string `json:"bin_mount"`
	// ProcSysKernel is where the host's /proc/sys/kernel is in the agent's
	// filesystem (a container's own /proc/sys is read-only).
	ProcSysKernel string `json:"proc_sys_kernel"`
}

// BinMountDir is where the agent writes BinDir's files: BinMount, or
// BinDir when it is not mounted elsewhere.
func (h Host) BinMountDir() string {
	if h.BinMount != "" {
		return h.BinMount
	}
	return h.BinDir
}

// Notify configures the agent's alerts: Feishu/Lark cards and Alertmanager.
// Notifications wait in a queue in the spool, so that a dead service never
// slows collection and nothing is lost across agent restarts.
type Notify struct {
	// DownloadURL is the download button's target for stores that cannot
	// presign a URL; "{id}" is replaced by the bundle id. Empty: no button.
	DownloadURL string `json:"download_url"`
	// Aggregate is the window in which crashes of one program (namespace,
	// workload or executable, signal) go into one card after the first.
	Aggregate Duration `json:"aggregate"`
	// QueueMax bounds each sink's queue of pending notifications; the
	// oldest are dropped (and counted) beyond it.
	QueueMax int `json:"queue_max"`
	// Mute silences crashes that match any entry.
	Mute         []Match      `json:"mute"`
	Feishu       []Feishu     `json:"feishu"`
	Alertmanager Alertmanager `json:"alertmanager"`

	// LinkExpiry is how long a card's presigned download link works: a
	// card forwarded out of the chat gives its reader the core (and the
	// memory it holds) until then. At most 7 days, S3's and OBS's limit.
	LinkExpiry Duration `json:"link_expiry"`
	// QueueMaxBytes bounds each sink's queue in bytes (in memory and in
	// the spool, also what is reloaded at start), beyond QueueMax's
	// count; the oldest are dropped and counted. ItemMaxBytes bounds one
	// notification: a larger one is refused (the bridge answers 413).
	QueueMaxBytes Size `json:"queue_max_bytes"`
	ItemMaxBytes  Size `json:"item_max_bytes"`
	// Bridge serves Alertmanager's webhook as Feishu cards.
	Bridge Bridge `json:"bridge"`
}

// Bridge configures the Alertmanager webhook bridge (/alertmanager/feishu)
// of the agent and of `corecatch feishu-bridge`. Whoever can POST to it
// posts into the company's chats, so it is off on the agent unless Listen
// is set, on a port of its own, and answers only requests bearing the
// token of TokenFile.
type Bridge struct {
	// Listen is the agent's address for the bridge (":9978"); empty: the
	// agent serves no bridge. feishu-bridge's --listen overrides it.
	Listen string `json:"listen"`
	// TokenFile holds the bearer token Alertmanager must send
	// (webhook_configs http_config.authorization.credentials_file); a
	// mounted Secret in a pod.
	TokenFile string `json:"token_file"`
	// ButtonHosts are the hosts (or *.domain) that buttons of bridged
	// cards may point to (runbook_url, generatorURL, externalURL); other
	// buttons are dropped. Empty: no buttons.
	ButtonHosts []string `json:"button_hosts"`
	// MaxBodyBytes bounds a webhook request; larger ones get 413.
	MaxBodyBytes Size `json:"max_body_bytes"`
}

// Match selects crashes by glob patterns (path.Match) over their identity;
// empty fields match anything, Labels match the pod's labels.
type Match struct {
	Namespace string            `json:"namespace,omitempty"`
	Workload  string            `json:"workload,omitempty"`
	Container string            `json:"container,omitempty"`
	Exe       string            `json:"exe,omitempty"`
	Signal    string            `json:"signal,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// Feishu is one Feishu/Lark custom bot and what it receives.
type Feishu struct {
	// Name tells bots apart in metrics and logs; default "feishu<index>".
	Name string `json:"name"`
	// Webhook is the bot's URL; WebhookFile reads it from a file (a
	// mounted Secret) instead.
	Webhook     string `json:"webhook"`
	WebhookFile string `json:"webhook_file,omitempty"`
	// Secret signs every request (the bot's "signature verification");
	// SecretFile reads it from a file.
	Secret     string `json:"secret"`
	SecretFile string `json:"secret_file,omitempty"`
	// Keyword is put into every card, for bots set to require one.
	Keyword string `json:"keyword"`
	// Lang is the cards' language: zh or en.
	Lang string `json:"lang"`
	// Routes select the crashes this bot gets (any route matches); none:
	// every crash.
	Routes []Match `json:"routes"`
	// Crashes and Alerts turn off the bot's crash cards or the cards of
	// Alertmanager's webhook (/alertmanager/feishu).
	Crashes *bool `json:"crashes,omitempty"`
	Alerts  *bool `json:"alerts,omitempty"`
}

// Alertmanager configures the push of every crash to Alertmanager.
type Alertmanager struct {
	// URL is Alertmanager's base URL (http://alertmanager:9093); empty
	// disables the push.
	URL string `json:"url"`
	// Duration is how long after a crash its alert stays firing.
	Duration Duration `json:"duration"`
	// Severity is the crash alerts' severity label.
	Severity string `json:"severity"`
}

// S3 says how to reach the bucket of an s3:// store; see store.S3Options.
type S3 struct {
	Endpoint        string `json:"endpoint"`
	Region          string `json:"region"`
	PathStyle       bool   `json:"path_style"`
	CredentialsFile string `json:"credentials_file"`
	STS             bool   `json:"sts"`
}

// Upload configures how bundles reach an S3 store: through the outbox in
// the spool, which the agent empties, or streamed straight to the bucket.
type Upload struct {
	// Direct makes the helper stream each bundle to the bucket instead of
	// the outbox, for nodes without spare disk; a bundle is lost when the
	// bucket cannot be reached during the crash.
	Direct bool `json:"direct"`
	// SpoolMaxUse and SpoolKeepFree bound the outbox as retention bounds
	// a local store: the newest crash is kept before older ones.
	SpoolMaxUse   Size `json:"spool_max_use"`
	SpoolKeepFree Size `json:"spool_keep_free"`
	// MaxBackoff is the longest the agent waits between two attempts
	// while the bucket cannot be reached.
	MaxBackoff Duration `json:"max_backoff"`
	// QuarantineAfter is how many times the bucket may refuse one bundle
	// for good (a key it never accepts, an unreadable file) before the
	// bundle is set aside, so that it stops delaying later bundles.
	QuarantineAfter int `json:"quarantine_after"`
}

// Identity configures how the helper learns whose crash it is.
type Identity struct {
	// CRIEndpoint is the runtime's CRI socket (unix:///path); empty tries
	// containerd's, CRI-O's and k3s's usual paths.
	CRIEndpoint string `json:"cri_endpoint"`
	// LogTail is how much of the end of the container's log goes into the
	// bundle.
	LogTail Size `json:"log_tail"`
	// Timeout bounds the CRI calls of one crash.
	Timeout Duration `json:"timeout"`
}

// Annotations a pod sets to choose what corecatch does with its crashes
// ("true" or "false"); they override Pods' namespace defaults. kubelet
// passes a pod's annotations to its CRI sandbox, where the helper reads
// them: the crash path never asks the API server.
const (
	// AnnotationCollect "false" keeps metadata, the backtrace and the
	// Event, not the core (secrets in memory).
	AnnotationCollect = "corecatch.io/collect"
	// AnnotationFreeze "false" never freezes the pod's containers.
	AnnotationFreeze = "corecatch.io/freeze"
	// AnnotationNotify "false" sends no Feishu card and no Alertmanager
	// alert for the pod's crashes.
	AnnotationNotify = "corecatch.io/notify"
)

// Pods sets per-namespace defaults of what is done with a pod's crashes.
type Pods struct {
	// Namespaces are matched by glob (path.Match), first match first;
	// unset fields stay on.
	Namespaces []PodDefaults `json:"namespaces"`
}

// PodDefaults are the defaults of the namespaces a glob matches.
type PodDefaults struct {
	Namespace string `json:"namespace"`
	Collect   *bool  `json:"collect,omitempty"`
	Freeze    *bool  `json:"freeze,omitempty"`
	Notify    *bool  `json:"notify,omitempty"`
}

// PodPolicy is what is done with one pod's crash; Why names what turned
// something off.
type PodPolicy struct {
	Collect, Freeze, Notify bool
	Why                     string
}

// Policy returns the policy of a crash in a pod of namespace with those
// annotations: everything on, then the first matching namespace's
// defaults, then the pod's annotations. A process in no pod (namespace "")
// gets everything.
func (p Pods) Policy(namespace string, annotations map[string]string) PodPolicy {
	pol := PodPolicy{Collect: true, Freeze: true, Notify: true}
	if namespace == "" {
		return pol
	}
	var def PodDefaults
	for _, n := range p.Namespaces {
		if ok, _ := path.Match(n.Namespace, namespace); ok {
			def = n
			break
		}
	}
	var why []string
	for _, f := range []struct {
		on  *bool
		def *bool
		key string
	}{{&pol.Collect, def.Collect, AnnotationCollect}, {&pol.Freeze, def.Freeze, AnnotationFreeze}, {&pol.Notify, def.Notify, AnnotationNotify}} {
		src := ""
		if f.def != nil {
			*f.on, src = *f.def, fmt.Sprintf("pods.namespaces %q", def.Namespace)
		}
		if v, err := strconv.ParseBool(annotations[f.key]); err == nil {
			*f.on, src = v, "annotation"
		}
		if !*f.on {
			why = append(why, src+" "+f.key+": false")
		}
	}
	pol.Why = strings.Join(why, ", ")
	return pol
}

// Freeze configures how the agent keeps a crashing container still while
// its core streams.
type Freeze struct {
	// Enabled turns freezing on.
	Enabled bool `json:"enabled"`
	// Max is the longest a container stays frozen, whatever the helper
	// does.
	Max Duration `json:"max"`
	// Allow and Deny add regular expressions over cgroup paths to the
	// built-in lists (containers of kubelet, CRI-O, docker, podman and
	// containerd are allowed; the root, system.slice, user.slice and the
	// agent's own cgroup are always refused).
	Allow []string `json:"allow"`
	Deny  []string `json:"deny"`
}

// Observer configures the eBPF observer's signal sets. Empty lists keep the
// defaults: every core-dumping signal, and every signal whose default
// action terminates.
type Observer struct {
	CoreSignals  []string `json:"core_signals"`
	FatalSignals []string `json:"fatal_signals"`
	// Senders names the sender of signals that kill a whole process
	// without a siginfo at delivery (kill -9); see observer.Options.
	Senders bool `json:"senders"`
	// MissingAfter is how long after a process died of a core signal the
	// agent waits for its bundle before recording a crash without a core.
	MissingAfter Duration `json:"missing_after"`
}

// Collect configures the pipe helper.
type Collect struct {
	// MaxCoreBytes keeps at most this many bytes of each core (0: whole).
	MaxCoreBytes Size `json:"max_core_bytes"`
	// MaxFileBytes is the largest mapped file the helper copies into a
	// bundle; larger ones are listed with a reason instead.
	MaxFileBytes Size `json:"max_file_bytes"`
	// MaxFilesTotalBytes is the budget of one bundle's captured files
	// (executable, libraries, data files) together, data bytes only: a
	// container that maps many large files cannot make a bundle that pushes
	// other bundles out of the store. Files past it are listed with a
	// reason; 0 keeps none.
	MaxFilesTotalBytes Size `json:"max_files_total_bytes"`
	// HonorRlimit caps each core at the crasher's RLIMIT_CORE.
	HonorRlimit bool `json:"honor_rlimit"`
	// CaptureEnviron stores /proc/PID/environ, which often holds secrets.
	CaptureEnviron bool `json:"capture_environ"`
	// CaptureTimeout bounds what the helper reads from the crashed process
	// (its files, memory and /proc texts) while the kernel holds it: a
	// read that never returns (a FUSE server that does not answer) costs
	// this much in each of the two phases that read the process (the
	// frame-pointer walk, then the capture of files), and the bundle says
	// what is missing, instead of holding the crasher and a collection
	// slot for ever.
	CaptureTimeout Duration `json:"capture_timeout"`
	// ReadNetworkFiles copies mapped files on FUSE and network filesystems
	// (NFS, CIFS/SMB, 9p, Ceph, ...) too; off, they are listed as skipped,
	// because their server can stall every read.
	ReadNetworkFiles bool `json:"read_network_files"`
	// Compression is the zstd level: fastest, default or better.
	Compression string `json:"compression"`
	// MaxCoresPerMinute caps whole cores stored per minute on this node
	// (0: no cap); MaxConcurrent caps collections compressing at once.
	// Crashes beyond keep metadata and a backtrace, their cores drained.
	MaxCoresPerMinute int `json:"max_cores_per_minute"`
	MaxConcurrent     int `json:"max_concurrent"`
	// Backlog bounds the crashes the agent holds at once through the
	// coredump socket (collecting or waiting for a collection slot);
	// beyond it a crash is refused before its dump and recorded without
	// its core (reason busy).
	Backlog int `json:"backlog"`
	// MemoryLimit bounds each helper: the Go runtime's soft limit, and
	// RLIMIT_AS at the limit plus what the runtime reserves. A crash
	// costs a helper at most 64 MiB (make bench); 0 leaves it unbounded.
	MemoryLimit Size `json:"memory_limit"`
}

// Retention bounds a local store (see store.Retention); an S3 store gets
// MaxAge only, applied by every agent every SweepInterval.
type Retention struct {
	MaxAge        Duration `json:"max_age"`
	MaxUse        Size     `json:"max_use"`
	KeepFree      Size     `json:"keep_free"`
	SweepInterval Duration `json:"sweep_interval"`
}

// The intakes (Config.Intake).
const (
	IntakeSocket = "socket"
	IntakePipe   = "pipe"
)

// Default returns the configuration used when no file exists.
func Default() *Config {
	return &Config{
		Store:          "file:///var/lib/corecatch/bundles",
		Spool:          "/var/lib/corecatch/spool",
		Socket:         "/run/corecatch/agent.sock",
		Intake:         IntakeSocket,
		CoredumpSocket: "/run/corecatch/coredump.sock",
		Collect: Collect{
			Backlog:            256,
			MaxFileBytes:       Size{Bytes: 1 << 30},
			MaxFilesTotalBytes: Size{Bytes: 256 << 20},
			CaptureTimeout:     Duration(30 * time.Second),
			Compression:        "fastest",
			MaxCoresPerMinute:  30,
			MaxConcurrent:      4,
			MemoryLimit:        Size{Bytes: 256 << 20},
		},
		Retention: Retention{
			MaxAge:   Duration(14 * 24 * time.Hour),
			MaxUse:   Size{Percent: 10},
			KeepFree: Size{Percent: 15},

			SweepInterval: Duration(6 * time.Hour),
		},
		Observer: Observer{CoreSignals: []string{}, FatalSignals: []string{}, MissingAfter: Duration(time.Minute)},
		Freeze:   Freeze{Enabled: true, Max: Duration(30 * time.Second), Allow: []string{}, Deny: []string{}},
		Identity: Identity{LogTail: Size{Bytes: 64 << 10}, Timeout: Duration(2 * time.Second)},
		Pods:     Pods{Namespaces: []PodDefaults{}},
		Notify: Notify{Aggregate: Duration(5 * time.Minute), QueueMax: 1000, Mute: []Match{}, Feishu: []Feishu{},
			Alertmanager: Alertmanager{Duration: Duration(15 * time.Minute), Severity: "warning"},
			LinkExpiry:   Duration(12 * time.Hour), QueueMaxBytes: Size{Bytes: 16 << 20}, ItemMaxBytes: Size{Bytes: 64 << 10},
			Bridge: Bridge{ButtonHosts: []string{}, MaxBodyBytes: Size{Bytes: 1 << 20}}},
		Analysis: Analysis{GDB: "gdb", MaxCoreBytes: Size{Bytes: 512 << 20}, Timeout: Duration(30 * time.Second),
			MaxMemory: Size{Bytes: 2 << 30}, MaxThreads: 64, RunAsUser: 65534, RunAsGroup: 65534},
		Dedup: Dedup{Window: Duration(10 * time.Minute), Namespaces: []NamespaceWindow{}},
		Host:  Host{ProcSysKernel: "/proc/sys/kernel"},
		Upload: Upload{SpoolMaxUse: Size{Percent: 10}, SpoolKeepFree: Size{Percent: 15}, MaxBackoff: Duration(time.Minute),
			QuarantineAfter: 3},
		Metrics: Metrics{MaxExeLabels: 100},
	}
}

// Load reads path over the defaults. A missing file at the default path is
// not an error (defaults apply); a missing file the user named is.
func Load(path string, explicit bool) (*Config, error) {
	c := Default()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse reads a config file's text over the defaults, as Load does, for
// configs that are not files of their own (the chart's ConfigMap, which
// `kubectl corecatch` reads); source names it in errors.
func Parse(data []byte, source string) (*Config, error) {
	c := Default()
	if err := yaml.UnmarshalStrict(data, c); err != nil {
		return nil, fmt.Errorf("config %s: %w (see `corecatch config example`)", source, err)
	}
	return c, c.Validate()
}

// Validate rejects values no command could work with.
func (c *Config) Validate() error {
	switch c.Collect.Compression {
	case "fastest", "default", "better":
	default:
		return fmt.Errorf("collect.compression %q: use fastest, default or better", c.Collect.Compression)
	}
	if c.Spool == "" || c.Spool[0] != '/' {
		return fmt.Errorf("spool %q must be an absolute path", c.Spool)
	}
	for _, p := range []struct{ key, path string }{
		{"host.bin_dir", c.Host.BinDir}, {"host.bin_mount", c.Host.BinMount}, {"host.proc_sys_kernel", c.Host.ProcSysKernel},
	} {
		if p.path != "" && !path.IsAbs(p.path) {
			return fmt.Errorf("%s %q must be an absolute path", p.key, p.path)
		}
	}
	if c.Host.ProcSysKernel == "" {
		return errors.New("host.proc_sys_kernel is empty: set it to /proc/sys/kernel, or where the host's is mounted")
	}
	if c.Host.BinMount != "" && c.Host.BinDir == "" {
		return errors.New("host.bin_mount is set without host.bin_dir: set bin_dir to the host path that bin_mount mounts")
	}
	if c.Upload.QuarantineAfter < 1 {
		return fmt.Errorf("upload.quarantine_after %d: use at least 1", c.Upload.QuarantineAfter)
	}
	if c.Upload.MaxBackoff < Duration(time.Second) {
		return fmt.Errorf("upload.max_backoff %s: use at least 1s", c.Upload.MaxBackoff)
	}
	if c.Collect.MaxCoreBytes.Percent != 0 || c.Collect.MaxFileBytes.Percent != 0 || c.Collect.MaxFilesTotalBytes.Percent != 0 || c.Collect.MemoryLimit.Percent != 0 {
		return errors.New("collect.max_core_bytes, collect.max_file_bytes, collect.max_files_total_bytes and collect.memory_limit take sizes, not percentages")
	}
	if l := c.Collect.MemoryLimit.Bytes; l != 0 && l < 64<<20 {
		return fmt.Errorf("collect.memory_limit %s: a crash costs the helper up to 64MiB; use at least that, or 0 for no limit", c.Collect.MemoryLimit)
	}
	if c.Analysis.RunAsUser == 0 {
		return errors.New("analysis.run_as_user 0 would run gdb as root on the crashed container's files: use an unprivileged uid (65534, nobody, by default)")
	}
	for _, exprs := range [][]string{c.Freeze.Allow, c.Freeze.Deny} {
		for _, e := range exprs {
			if _, err := regexp.Compile(e); err != nil {
				return fmt.Errorf("freeze.allow/deny %q: %w", e, err)
			}
		}
	}
	switch c.Intake {
	case IntakeSocket, IntakePipe:
	default:
		return fmt.Errorf("intake %q: use socket or pipe", c.Intake)
	}
	if !path.IsAbs(c.CoredumpSocket) || strings.ContainsAny(c.CoredumpSocket, " \t\n") {
		return fmt.Errorf("coredump_socket %q must be an absolute path without spaces", c.CoredumpSocket)
	}
	if c.Collect.Backlog < c.Collect.MaxConcurrent {
		return fmt.Errorf("collect.backlog %d must be at least collect.max_concurrent (%d)", c.Collect.Backlog, c.Collect.MaxConcurrent)
	}
	if c.Collect.CaptureTimeout < Duration(time.Second) {
		return fmt.Errorf("collect.capture_timeout %s: use at least 1s (a healthy capture takes well under a second, a stalled one is cut here)", c.Collect.CaptureTimeout)
	}
	if c.Metrics.MaxExeLabels < 1 {
		return fmt.Errorf("metrics.max_exe_labels %d: allow at least 1 executable name", c.Metrics.MaxExeLabels)
	}
	if c.Collect.MaxConcurrent < 1 || c.Collect.MaxCoresPerMinute < 0 {
		return errors.New("collect.max_concurrent must be at least 1 and collect.max_cores_per_minute at least 0 (0: no cap)")
	}
	for _, n := range c.Pods.Namespaces {
		if _, err := path.Match(n.Namespace, ""); err != nil || n.Namespace == "" {
			return fmt.Errorf("pods.namespaces %q: want a namespace glob (%v)", n.Namespace, err)
		}
	}
	for _, n := range c.Dedup.Namespaces {
		if _, err := path.Match(n.Namespace, ""); err != nil {
			return fmt.Errorf("dedup.namespaces %q: %w", n.Namespace, err)
		}
	}
	for _, u := range strings.Fields(c.Analysis.DebuginfodURLs) {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("analysis.debuginfod_urls %q: write http(s)://host:port, space-separated", u)
		}
	}
	return c.Notify.validate()
}

func (n *Notify) validate() error {
	if n.QueueMax < 1 {
		return fmt.Errorf("notify.queue_max %d: keep at least 1 pending notification per sink", n.QueueMax)
	}
	matches := n.Mute
	for i, f := range n.Feishu {
		where := fmt.Sprintf("notify.feishu[%d]", i)
		if (f.Webhook == "") == (f.WebhookFile == "") {
			return fmt.Errorf("%s: set exactly one of webhook and webhook_file", where)
		}
		if f.Secret != "" && f.SecretFile != "" {
			return fmt.Errorf("%s: set secret or secret_file, not both", where)
		}
		if f.Lang != "" && f.Lang != "zh" && f.Lang != "en" {
			return fmt.Errorf("%s.lang %q: use zh or en", where, f.Lang)
		}
		matches = append(matches, f.Routes...)
	}
	for _, m := range matches {
		for _, p := range append([]string{m.Namespace, m.Workload, m.Container, m.Exe, m.Signal}, slices.Collect(maps.Values(m.Labels))...) {
			if _, err := path.Match(p, ""); err != nil {
				return fmt.Errorf("notify: pattern %q: %w (patterns are globs: *, ?, [a-z])", p, err)
			}
		}
	}
	switch n.Alertmanager.Severity {
	case "critical", "warning", "info":
	default:
		return fmt.Errorf("notify.alertmanager.severity %q: use critical, warning or info", n.Alertmanager.Severity)
	}
	if u := n.Alertmanager.URL; u != "" {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("notify.alertmanager.url %q: write http(s)://host:port", u)
		}
	}
	return n.validateLimits()
}

// MaxLinkExpiry is the longest a presigned S3/OBS link may be valid.
const MaxLinkExpiry = 7 * 24 * time.Hour

// validateLimits checks the bounds of links, queues and the bridge.
func (n *Notify) validateLimits() error {
	if e := time.Duration(n.LinkExpiry); e < time.Minute || e > MaxLinkExpiry {
		return fmt.Errorf("notify.link_expiry %s: use from 1m to 7d (S3's and OBS's longest presigned link)", n.LinkExpiry)
	}
	for _, s := range []struct {
		key  string
		size Size
	}{{"notify.queue_max_bytes", n.QueueMaxBytes}, {"notify.item_max_bytes", n.ItemMaxBytes}, {"notify.bridge.max_body_bytes", n.Bridge.MaxBodyBytes}} {
		if s.size.Percent != 0 || s.size.Bytes < 4<<10 {
			return fmt.Errorf("%s %s: use a size of at least 4KiB (not a percentage)", s.key, s.size)
		}
	}
	if n.ItemMaxBytes.Bytes > n.QueueMaxBytes.Bytes {
		return fmt.Errorf("notify.item_max_bytes %s is larger than notify.queue_max_bytes %s: raise the queue's or lower the item's", n.ItemMaxBytes, n.QueueMaxBytes)
	}
	if _, _, err := net.SplitHostPort(n.Bridge.Listen); n.Bridge.Listen != "" && err != nil {
		return fmt.Errorf("notify.bridge.listen %q: write [host]:port (:9978): %w", n.Bridge.Listen, err)
	}
	if n.Bridge.Listen != "" && n.Bridge.TokenFile == "" {
		return errors.New("notify.bridge.listen is set without notify.bridge.token_file: the bridge answers only requests bearing a token; put one in a file (a mounted Secret) and name it")
	}
	for _, h := range n.Bridge.ButtonHosts {
		if strings.TrimPrefix(h, "*.") == "" || strings.ContainsAny(strings.TrimPrefix(h, "*."), "*/:@ ") {
			return fmt.Errorf("notify.bridge.button_hosts %q: write a host name (runbooks.example.com) or *.example.com", h)
		}
	}
	return nil
}

// Marshal renders the configuration as YAML, for the helper's snapshot.
func (c *Config) Marshal() ([]byte, error) { return yaml.Marshal(c) }

// Size is a byte count written as a number, with a unit (512MiB, 4GB) or as
// a percentage of the filesystem it applies to (10%).
type Size struct {
	Bytes   int64
	Percent float64
}

// Of resolves the size against a filesystem of total bytes.
func (s Size) Of(total int64) int64 {
	if s.Percent != 0 {
		return int64(float64(total) * s.Percent / 100)
	}
	return s.Bytes
}

var units = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
}

// ParseSize reads "0", "1048576", "512MiB", "4GB" or "10%".
func ParseSize(text string) (Size, error) {
	t := strings.TrimSpace(text)
	if p, ok := strings.CutSuffix(t, "%"); ok {
		f, err := finite(strings.TrimSpace(p))
		if err != nil || f < 0 || f > 100 {
			return Size{}, fmt.Errorf("size %q: a percentage must be between 0%% and 100%%", text)
		}
		return Size{Percent: f}, nil
	}
	mult := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	f, err := finite(t)
	if err != nil || f < 0 {
		return Size{}, fmt.Errorf("size %q: write a number of bytes, optionally with a unit (512MiB, 4GB) or a percentage (10%%)", text)
	}
	if f*float64(mult) >= math.MaxInt64 {
		return Size{}, fmt.Errorf("size %q is too large: at most 8EiB", text)
	}
	return Size{Bytes: int64(f * float64(mult))}, nil
}

// String renders the size as ParseSize reads it.
func (s Size) String() string {
	if s.Percent != 0 {
		return strconv.FormatFloat(s.Percent, 'f', -1, 64) + "%"
	}
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if s.Bytes != 0 && s.Bytes%u.mult == 0 {
			return strconv.FormatInt(s.Bytes/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(s.Bytes, 10)
}

// MarshalJSON writes the size as a string.
func (s Size) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(s.String())), nil }

// UnmarshalJSON accepts a string or a bare number.
func (s *Size) UnmarshalJSON(b []byte) error { return unmarshal(b, ParseSize, s) }

// unmarshal parses a JSON string or bare scalar with parse into dst.
func unmarshal[T any](b []byte, parse func(string) (T, error), dst *T) error {
	text := string(b)
	if uq, err := strconv.Unquote(text); err == nil {
		text = uq
	}
	v, err := parse(text)
	if err != nil {
		return err
	}
	*dst = v
	return nil
}

// finite reads a decimal number, refusing what strconv.ParseFloat also
// accepts but no size or duration can be: NaN and the infinities.
func finite(text string) (float64, error) {
	f, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return 0, err
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%q is not a finite number", text)
	}
	return f, nil
}

// Duration is a time.Duration written as Go does (90s, 10m, 2h) or in days
// (14d), the unit retention is usually thought in.
type Duration time.Duration

// ParseDuration reads "0", "10m", "36h" or "14d".
func ParseDuration(text string) (Duration, error) {
	t := strings.TrimSpace(text)
	if d, ok := strings.CutSuffix(t, "d"); ok {
		n, err := finite(d)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("duration %q: write 14d, 36h or 10m", text)
		}
		if n*float64(24*time.Hour) >= math.MaxInt64 {
			return 0, fmt.Errorf("duration %q is too long: at most 106751d", text)
		}
		return Duration(n * float64(24*time.Hour)), nil
	}
	if t == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("duration %q: write 14d, 36h or 10m", text)
	}
	return Duration(d), nil
}

// String renders whole days as "Nd" and anything else as Go does.
func (d Duration) String() string {
	day := 24 * time.Hour
	if td := time.Duration(d); td != 0 && td%day == 0 {
		return strconv.FormatInt(int64(td/day), 10) + "d"
	}
	return time.Duration(d).String()
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(d.String())), nil }

// UnmarshalJSON accepts a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error { return unmarshal(b, ParseDuration, d) }
