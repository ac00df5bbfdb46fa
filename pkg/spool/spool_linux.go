package spool

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/sysctl"
)

// write replaces the file p with data, atomically (a reader sees the old
// file or the new one, whole) and synced, creating its directory.
func write(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), dirMode); err != nil {
		return err
	}
	return sysctl.WriteAtomic(p, fileMode, bytes.NewReader(data))
}

// WriteHelperConfig replaces the helper's config snapshot (HelperConfig),
// creating the spool: a helper that a crash starts meanwhile reads the old
// snapshot or the new one, never half of one.
func (s Spool) WriteHelperConfig(data []byte) error {
	if err := write(s.HelperConfig(), data); err != nil {
		return fmt.Errorf("write the helper's config in the spool %s: %w", s.root, err)
	}
	return nil
}

// Reports are the bundles helpers published while the agent's socket was
// there but did not answer (a killed agent): each helper leaves the
// bundle's metadata, and the agent's next start takes them, so that no
// crash goes uncounted or unannounced.
type Reports struct{ dir string }

// Reports is the spool's reports/ directory.
func (s Spool) Reports() Reports { return Reports{dir: filepath.Join(s.root, "reports")} }

// Put leaves m's report as <id>.json, atomically: the agent never reads
// half a report.
func (r Reports) Put(m *bundle.Metadata) error {
	if err := bundle.ValidID(m.ID); err != nil {
		return err
	}
	data, err := bundle.Encode(m)
	if err != nil {
		return err
	}
	return write(filepath.Join(r.dir, m.ID+".json"), data)
}

// List reads the reports left, oldest first (ids begin with their time).
// Reports that cannot be read are named in the error and left in place,
// and the others are returned all the same.
func (r Reports) List() ([]*bundle.Metadata, error) {
	entries, err := os.ReadDir(r.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*bundle.Metadata
	var errs []error
	for _, e := range entries {
		// Temporary files of a write in progress begin with a dot.
		if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(r.dir, e.Name()))
		if err == nil {
			var m *bundle.Metadata
			if m, err = bundle.Decode(data); err == nil {
				out = append(out, m)
				continue
			}
		}
		errs = append(errs, fmt.Errorf("report %s: %w", e.Name(), err))
	}
	return out, errors.Join(errs...)
}

// Forget removes the report of the bundle id once the agent took it.
func (r Reports) Forget(id string) error {
	if err := bundle.ValidID(id); err != nil {
		return err
	}
	return os.Remove(filepath.Join(r.dir, id+".json"))
}

// Crash storms are decided in the spool by the helpers of one node (and
// the agent's own collections): each helper is a short-lived process of its
// own, so the state lives in small flock-ed files, and a helper's locks go
// when it exits, however it exits. What the files hold is pkg/collector's.

// Dedup opens the record of the bug key's dedup window (dedup/ and the
// first 12 bytes of the key's SHA-256 in hex), created empty, and waits for
// its exclusive lock; closing the file releases it.
func (s Spool) Dedup(key string) (*os.File, error) {
	h := sha256.Sum256([]byte(key))
	return locked(filepath.Join(s.dedupDir(), hex.EncodeToString(h[:12])), unix.LOCK_EX)
}

// Rate opens the node's record of the whole cores kept in the last minute,
// locked like Dedup.
func (s Spool) Rate() (*os.File, error) { return locked(s.rateFile(), unix.LOCK_EX) }

// Slot takes collection slot i when it is free, without waiting: it is
// held until the file is closed.
func (s Spool) Slot(i int) (*os.File, error) {
	return locked(filepath.Join(s.slotDir(), strconv.Itoa(i)), unix.LOCK_EX|unix.LOCK_NB)
}

// locked opens (creating) a file of the spool and takes its lock. A
// refused crash's decision takes these while the kernel holds the process,
// so the file is opened as the regular file it is: os.OpenFile would first
// offer it to the runtime's poller, three system calls that end refused.
func locked(p string, how int) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(p), dirMode); err != nil {
		return nil, err
	}
	fd, err := unix.Open(p, unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, fileMode)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Marker is a file whose presence is the agent's word to the helpers.
type Marker struct{ path string }

// ClusterMarker (dedup/cluster) tells helpers that the agent found the S3
// store honouring conditional writes: deduplication may span the cluster.
// Its absence keeps it node-local, so a helper that cannot tell decides
// for its node alone.
func (s Spool) ClusterMarker() Marker { return Marker{path: filepath.Join(s.dedupDir(), "cluster")} }

// Set leaves the marker, saying why in its content (the store's name).
func (m Marker) Set(why string) error { return write(m.path, []byte(why+"\n")) }

// Clear removes the marker; one that is not there is cleared already.
func (m Marker) Clear() error {
	if err := os.Remove(m.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// IsSet reports whether the marker is there.
func (m Marker) IsSet() bool {
	_, err := os.Stat(m.path)
	return err == nil
}
