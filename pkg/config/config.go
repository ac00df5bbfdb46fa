// Package config reads corecatch's one YAML file. Every command reads the same
// file, so the pipe helper the kernel starts and the SRE's commands agree on
// where bundles live and what is kept.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"regexp"
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
	// Node names this node in metadata; empty means the host name.
	Node      string    `json:"node"`
	Collect   Collect   `json:"collect"`
	Retention Retention `json:"retention"`
	Observer  Observer  `json:"observer"`
	Freeze    Freeze    `json:"freeze"`
	Identity  Identity  `json:"identity"`
	S3        S3        `json:"s3"`
	Upload    Upload    `json:"upload"`
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
	// HonorRlimit caps each core at the crasher's RLIMIT_CORE.
	HonorRlimit bool `json:"honor_rlimit"`
	// CaptureEnviron stores /proc/PID/environ, which often holds secrets.
	CaptureEnviron bool `json:"capture_environ"`
	// Compression is the zstd level: fastest, default or better.
	Compression string `json:"compression"`
}

// Retention bounds a local store (see store.Retention); an S3 store gets
// MaxAge only, applied by every agent every SweepInterval.
type Retention struct {
	MaxAge        Duration `json:"max_age"`
	MaxUse        Size     `json:"max_use"`
	KeepFree      Size     `json:"keep_free"`
	SweepInterval Duration `json:"sweep_interval"`
}

// Default returns the configuration used when no file exists.
func Default() *Config {
	return &Config{
		Store:  "file:///var/lib/corecatch/bundles",
		Spool:  "/var/lib/corecatch/spool",
		Socket: "/run/corecatch/agent.sock",
		Collect: Collect{
			MaxFileBytes: Size{Bytes: 1 << 30},
			Compression:  "fastest",
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
		Upload:   Upload{SpoolMaxUse: Size{Percent: 10}, SpoolKeepFree: Size{Percent: 15}, MaxBackoff: Duration(time.Minute)},
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
	if err := yaml.UnmarshalStrict(data, c); err != nil {
		return nil, fmt.Errorf("config %s: %w (see `corecatch config example`)", path, err)
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
	if c.Upload.MaxBackoff < Duration(time.Second) {
		return fmt.Errorf("upload.max_backoff %s: use at least 1s", c.Upload.MaxBackoff)
	}
	if c.Collect.MaxCoreBytes.Percent != 0 || c.Collect.MaxFileBytes.Percent != 0 {
		return errors.New("collect.max_core_bytes and collect.max_file_bytes take sizes, not percentages")
	}
	for _, exprs := range [][]string{c.Freeze.Allow, c.Freeze.Deny} {
		for _, e := range exprs {
			if _, err := regexp.Compile(e); err != nil {
				return fmt.Errorf("freeze.allow/deny %q: %w", e, err)
			}
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
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
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
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 {
		return Size{}, fmt.Errorf("size %q: write a number of bytes, optionally with a unit (512MiB, 4GB) or a percentage (10%%)", text)
	}
	if f*float64(mult) >= math.MaxInt64 {
		return Size{}, fmt.Errorf("size %q is too large", text)
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

// Duration is a time.Duration written as Go does (90s, 10m, 2h) or in days
// (14d), the unit retention is usually thought in.
type Duration time.Duration

// ParseDuration reads "0", "10m", "36h" or "14d".
func ParseDuration(text string) (Duration, error) {
	t := strings.TrimSpace(text)
	if d, ok := strings.CutSuffix(t, "d"); ok {
		n, err := strconv.ParseFloat(d, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("duration %q: write 14d, 36h or 10m", text)
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
