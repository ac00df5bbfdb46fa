package freezer

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"
)

// Options configures a Freezer.
type Options struct {
	// StateDir holds one small record per frozen cgroup, written before
	// the freeze and removed after the thaw, so that an agent killed in
	// between thaws the cgroup on its next start (ThawRecorded). Required;
	// created if missing. A directory on /run suits: a reboot thaws all.
	StateDir string
	// Policy says which cgroups may be frozen.
	Policy Policy
	// V2Root and V1Root are the roots of the cgroup v2 hierarchy and of the
	// v1 freezer hierarchy. Both empty: detected (v2 at /sys/fs/cgroup on
	// unified hosts, /sys/fs/cgroup/unified on hybrid ones; the v1 freezer
	// at /sys/fs/cgroup/freezer on hybrid and legacy ones). Either set:
	// both are taken as given, and an empty one is not used. For tests.
	V2Root, V1Root string
}

// Freezer freezes container cgroups without cutting the core of the
// process that crashed in them. It is safe for concurrent use; two freezes
// of one cgroup keep it frozen until both are thawed.
type Freezer struct {
	stateDir string
	policy   Policy
	hiers    []*hierarchy // v2 first: preferred when a cgroup is in both

	mu   sync.Mutex
	refs map[string]int // record name -> live freezes of that cgroup
}

// Frozen is a cgroup this Freezer froze; pass it to Thaw.
type Frozen struct {
	// Path is the cgroup path as passed to Freeze.
	Path string
	// Mode is "v2" (cgroup.freeze) or "v1" (the v1 freezer controller),
	// for the metadata: the two differ in what a frozen task still does
	// (a v2-frozen task dies of SIGKILL, a v1-frozen one only once thawed).
	Mode string
	// Latency is the time from the call to Freeze until the cgroup was
	// frozen: how much the container could change after the crash.
	Latency time.Duration

	h      *hierarchy
	dir    string
	thawed bool
}

// hierarchy is how one cgroup hierarchy freezes. The library's own
// Freeze/Thaw (containerd/cgroups) wait forever for a cgroup that never
// gets there (a task in uninterruptible sleep keeps a v1 cgroup FREEZING),
// so the freezer writes the state files itself and waits with a deadline.
type hierarchy struct {
	mode          string
	root          string
	control       string // written to freeze and thaw
	freeze, thaw  string
	watch         string // read (and for v2 polled) to see the state
	pollable      bool
	frozenContent func(string) bool
	// The v1 freezer asks each task once; one that was about to sleep
	// then (a vfork parent, measured: its child freezes, it waits for the
	// child unfrozen) keeps the cgroup FREEZING until it is asked again,
	// so wait writes FROZEN again while the cgroup is not frozen.
	rewrite bool
}

func newV2(root string) *hierarchy {
	return &hierarchy{
		mode: "v2", root: root,
		control: "cgroup.freeze", freeze: "1", thaw: "0",
		watch: "cgroup.events", pollable: true,
		frozenContent: func(s string) bool { return slices.Contains(strings.Split(s, "\n"), "frozen 1") },
	}
}

// newV1: the first v1 freeze on a machine with no other v1 cgroup frozen
// costs about 1.5 ms more (measured): the kernel switches its freezer on.
func newV1(root string) *hierarchy {
	return &hierarchy{
		mode: "v1", root: root,
		control: "freezer.state", freeze: "FROZEN", thaw: "THAWED",
		watch:         "freezer.state",
		frozenContent: func(s string) bool { return strings.TrimSpace(s) == "FROZEN" },
		rewrite:       true,
	}
}

// New returns a Freezer recording into opts.StateDir. It does not thaw
// what an earlier agent left frozen: call ThawRecorded for that.
func New(opts Options) (*Freezer, error) {
	if opts.StateDir == "" {
		return nil, errors.New("freezer: no state directory: set Options.StateDir")
	}
	v2, v1 := opts.V2Root, opts.V1Root
	if v2 == "" && v1 == "" {
		switch cgroups.Mode() {
		case cgroups.Unified:
			v2 = "/sys/fs/cgroup"
		case cgroups.Hybrid:
			v2, v1 = "/sys/fs/cgroup/unified", "/sys/fs/cgroup/freezer"
		case cgroups.Legacy:
			v1 = "/sys/fs/cgroup/freezer"
		}
	}
	f := &Freezer{stateDir: opts.StateDir, policy: opts.Policy, refs: map[string]int{}}
	if v2 != "" {
		f.hiers = append(f.hiers, newV2(v2))
	}
	if v1 != "" && exists(v1) {
		f.hiers = append(f.hiers, newV1(v1))
	}
	if len(f.hiers) == 0 {
		return nil, errors.New("freezer: neither cgroup v2 nor the v1 freezer controller is mounted under /sys/fs/cgroup: mount one to freeze crashing containers")
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("freezer: create the state directory: %w", err)
	}
	return f, nil
}

// Check says whether the policy lets cgroupPath be frozen (nil) or why not
// (a *DeniedError), freezing nothing: a caller with dearer rules of its
// own (a pod's annotation, from the container runtime) asks those only of
// a cgroup this policy lets be frozen.
func (f *Freezer) Check(cgroupPath string) error { return f.policy.Check(cgroupPath) }

// Freeze freezes the cgroup a crashing process is in, keeping the rest of
// its container as it was while the core streams. cgroupPath is that
// cgroup as /proc/PID/cgroup shows it: the "0::" path, or where containers
// live in v1 hierarchies only, the freezer line's path; the v2 hierarchy
// is used when the cgroup is there, else the v1 freezer. crasher is the
// crashing process's pid (thread group id): it must be in that cgroup, and
// it is moved, with all its threads, to the holding cgroup first, since a
// freeze that includes the dumping process cuts its core. A cgroup the
// policy refuses yields a *DeniedError; one that is not frozen within
// timeout is thawed again and yields an error.
func (f *Freezer) Freeze(cgroupPath string, crasher int, timeout time.Duration) (*Frozen, error) {
	start := time.Now()
	if err := f.policy.Check(cgroupPath); err != nil {
		return nil, fmt.Errorf("not freezing cgroup %s: %w", cgroupPath, err)
	}
	fr, err := f.find(cgroupPath)
	if err != nil {
		return nil, err
	}
	if err := f.hold(fr, crasher); err != nil {
		return nil, err
	}
	if err := f.freeze(fr, start.Add(timeout)); err != nil {
		return nil, err
	}
	fr.Latency = time.Since(start)
	return fr, nil
}

// freeze records and freezes fr's cgroup, and waits until it is frozen;
// past the deadline it thaws it again.
func (f *Freezer) freeze(fr *Frozen, deadline time.Time) error {
	// Opened before the freeze so that no change of state goes unseen.
	watch, err := unix.Open(filepath.Join(fr.dir, fr.h.watch), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("freeze cgroup %s: %w", fr.Path, err)
	}
	defer unix.Close(watch)
	if err := f.acquire(fr); err != nil {
		return err
	}
	if err := fr.wait(watch, deadline); err != nil {
		return errors.Join(err, f.Thaw(fr))
	}
	return nil
}

// find picks the hierarchy the cgroup is in.
func (f *Freezer) find(cgroupPath string) (*Frozen, error) {
	var roots []string
	for _, h := range f.hiers {
		dir := filepath.Join(h.root, cgroupPath)
		if exists(filepath.Join(dir, h.control)) {
			return &Frozen{Path: cgroupPath, Mode: h.mode, h: h, dir: dir}, nil
		}
		roots = append(roots, h.root)
	}
	return nil, fmt.Errorf("freeze cgroup %s: not found under %s: pass the path /proc/PID/cgroup shows",
		cgroupPath, strings.Join(roots, " or "))
}

// hold moves the crasher out of the cgroup about to be frozen. Without
// that the freeze would cut its core, so any failure here stops the freeze.
func (f *Freezer) hold(fr *Frozen, crasher int) error {
	procs, err := os.ReadFile(filepath.Join(fr.dir, "cgroup.procs"))
	if err != nil {
		return fmt.Errorf("freeze cgroup %s: %w", fr.Path, err)
	}
	pid := strconv.Itoa(crasher)
	if !slices.Contains(strings.Fields(string(procs)), pid) {
		return fmt.Errorf("not freezing cgroup %s: process %d is not in it (pass the crashing process's own cgroup and its thread group id)", fr.Path, crasher)
	}
	hold := filepath.Join(fr.h.root, holdName)
	if err := os.Mkdir(hold, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("not freezing cgroup %s: create the holding cgroup: %w", fr.Path, err)
	}
	if err := writeFile(filepath.Join(hold, "cgroup.procs"), pid); err != nil {
		return fmt.Errorf("not freezing cgroup %s, which would cut the core: move process %d to %s: %w", fr.Path, crasher, hold, err)
	}
	return nil
}

// acquire records the cgroup (first freeze of it only) and freezes it.
func (f *Freezer) acquire(fr *Frozen) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := fr.recordName()
	if f.refs[key] == 0 {
		if err := f.record(fr); err != nil {
			return err
		}
	}
	f.refs[key]++
	if err := writeFile(filepath.Join(fr.dir, fr.h.control), fr.h.freeze); err != nil {
		fr.thawed = true
		return errors.Join(fmt.Errorf("freeze cgroup %s: %w", fr.Path, err), f.release(fr))
	}
	return nil
}

// wait waits until the cgroup is frozen or the deadline passes, checking
// (on v1 asking again) at growing intervals up to 1 ms, and on v2 also
// woken by the kernel's notification on cgroup.events (which it may delay
// by up to 10 ms: at most 100 notifications a second per file).
func (fr *Frozen) wait(watch int, deadline time.Time) error {
	buf := make([]byte, 256)
	step := 50 * time.Microsecond
	for {
		n, err := unix.Pread(watch, buf, 0)
		if err != nil {
			return fmt.Errorf("freeze cgroup %s: read %s: %w", fr.Path, fr.h.watch, err)
		}
		if fr.h.frozenContent(string(buf[:n])) {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("cgroup %s was not frozen in time (%s says %q; a task in uninterruptible sleep can hold it up), so it was thawed again",
				fr.Path, fr.h.watch, strings.TrimSpace(string(buf[:n])))
		}
		if fr.h.rewrite {
			if err := writeFile(filepath.Join(fr.dir, fr.h.control), fr.h.freeze); err != nil {
				return fmt.Errorf("freeze cgroup %s: %w", fr.Path, err)
			}
		}
		ts := unix.NsecToTimespec(int64(min(step, left)))
		var fds []unix.PollFd
		if fr.h.pollable {
			fds = []unix.PollFd{{Fd: int32(watch), Events: unix.POLLPRI}}
		}
		if _, err := unix.Ppoll(fds, &ts, nil); err != nil && err != unix.EINTR {
			return fmt.Errorf("freeze cgroup %s: poll %s: %w", fr.Path, fr.h.watch, err)
		}
		step = min(2*step, time.Millisecond)
	}
}

// Thaw thaws a cgroup Freeze froze, unless another freeze of it is still
// live, and forgets its record. Thawing twice is harmless, and a cgroup
// removed meanwhile counts as thawed.
func (f *Freezer) Thaw(fr *Frozen) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fr.thawed {
		return nil
	}
	fr.thawed = true
	return f.release(fr)
}

// release drops one freeze of fr's cgroup and thaws it after the last one.
// On failure the freeze stays counted, so Thaw can be tried again.
func (f *Freezer) release(fr *Frozen) error {
	key := fr.recordName()
	if f.refs[key]--; f.refs[key] > 0 {
		return nil
	}
	if err := thaw(fr.h, fr.dir); err != nil {
		f.refs[key]++
		fr.thawed = false
		return fmt.Errorf("thaw cgroup %s: %w (write %s to %s to thaw it by hand)", fr.Path, err, fr.h.thaw, filepath.Join(fr.dir, fr.h.control))
	}
	delete(f.refs, key)
	if err := os.Remove(filepath.Join(f.stateDir, key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("thawed cgroup %s but could not remove its record: %w", fr.Path, err)
	}
	return nil
}

// thaw thaws the cgroup at dir; a cgroup that is gone needs no thawing.
func thaw(h *hierarchy, dir string) error {
	err := writeFile(filepath.Join(dir, h.control), h.thaw)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// ThawRecorded thaws every cgroup the state directory lists, as an agent
// killed while it held them frozen left them, removes the records and
// returns the paths it thawed. A recorded cgroup that no longer exists is
// forgotten. Call it at start, before any Freeze.
func (f *Freezer) ThawRecorded() ([]string, error) {
	entries, err := os.ReadDir(f.stateDir)
	if err != nil {
		return nil, fmt.Errorf("read the freezer's records: %w", err)
	}
	var thawed []string
	var errs []error
	for _, e := range entries {
		file := filepath.Join(f.stateDir, e.Name())
		fr, err := f.readRecord(file)
		if err != nil {
			errs = append(errs, err)
		} else if fr != nil && exists(fr.dir) {
			if err := thaw(fr.h, fr.dir); err != nil {
				errs = append(errs, fmt.Errorf("thaw recorded cgroup %s: %w (write %s to %s by hand)", fr.Path, err, fr.h.thaw, filepath.Join(fr.dir, fr.h.control)))
				continue // keep the record for the next try
			}
			thawed = append(thawed, fr.Path)
		}
		if err := os.Remove(file); err != nil {
			errs = append(errs, fmt.Errorf("remove freezer record: %w", err))
		}
	}
	return thawed, errors.Join(errs...)
}

// record is what the state directory holds about one frozen cgroup.
type record struct {
	Mode string `json:"mode"`
	Path string `json:"path"`
}

// recordName names the record of fr's cgroup: the same cgroup always has
// the same one.
func (fr *Frozen) recordName() string {
	sum := sha256.Sum256([]byte(fr.Mode + ":" + fr.Path))
	return fr.Mode + "-" + hex.EncodeToString(sum[:8]) + ".json"
}

// record writes fr's record. It is written whole through a rename, so a
// record is either there or not. It is not synced: it has to outlive the
// agent, not the machine, whose reboot thaws everything anyway.
func (f *Freezer) record(fr *Frozen) error {
	data, err := json.Marshal(record{Mode: fr.Mode, Path: fr.Path})
	if err != nil {
		return err
	}
	name := filepath.Join(f.stateDir, fr.recordName())
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("not freezing cgroup %s: record it: %w", fr.Path, err)
	}
	if err := os.Rename(tmp, name); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("not freezing cgroup %s: record it: %w", fr.Path, err)
	}
	return nil
}

// readRecord reads one file of the state directory. It returns nil and no
// error for a file that names nothing to thaw: a temporary file (the agent
// died before the freeze) or a cgroup of a hierarchy no longer used.
func (f *Freezer) readRecord(file string) (*Frozen, error) {
	if !strings.HasSuffix(file, ".json") {
		return nil, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read freezer record: %w", err)
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil || !strings.HasPrefix(rec.Path, "/") || path.Clean(rec.Path) != rec.Path {
		return nil, fmt.Errorf("freezer record %s is damaged (%q): removed it; thaw that cgroup by hand if it is still frozen", file, data)
	}
	for _, h := range f.hiers {
		if h.mode == rec.Mode {
			return &Frozen{Path: rec.Path, Mode: rec.Mode, h: h, dir: filepath.Join(h.root, rec.Path)}, nil
		}
	}
	return nil, nil
}

func exists(name string) bool {
	_, err := os.Stat(name)
	return err == nil
}

// writeFile writes a cgroup control file, which must exist.
func writeFile(name, data string) error {
	file, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = file.WriteString(data)
	return errors.Join(err, file.Close())
}
