package spool

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// Missing holds the crashes the agent saw (a core signal) and whose bundle
// it still waits for, so that an agent restarted within
// observer.missing_after still records those whose core never came. The
// record's type is the agent's; each is stored as gob of it.
//
// Records are appended to one journal (missing/journal) that the agent
// keeps open: an append is a write of tens of µs, where a file of its own
// per crash, created and renamed into place, took 0.2-0.4 ms of journalled
// metadata changes on ext4, paid while the kernel held the crashed
// process. Appends are not synced: what they guard against is the agent's
// worker dying (a kill, an OOM, a rolling update), which the page cache
// outlives; a node that goes down takes its pending records with it.
// Records of earlier agents, one <pid>.gob file each, are still read.
type Missing struct {
	dir string

	mu      sync.Mutex
	journal *os.File     // opened, and live read from it, at the first change
	live    map[int]bool // pids with a record in the journal
	enc     map[reflect.Type]*recordEncoder
}

// recordEncoder writes records of one type as a fresh gob encoder would,
// its type's descriptors then the value, without building the descriptors
// anew for each: that took four fifths of a record's encoding, paid on the
// agent's CPUs while the kernel holds a crashed process. It keeps an
// encoder that has sent them and the bytes it sent them as. A type with
// an interface field, whose concrete types an encoder sends as it meets
// them, must not be recorded.
type recordEncoder struct {
	out  bytes.Buffer
	enc  *gob.Encoder
	head []byte // the type's descriptors
}

// newRecordEncoder learns rec's type's descriptors: the first encoding of
// a value is the descriptors and the value, the second the value alone.
// It checks that the two read back as a fresh encoder's would.
func newRecordEncoder(rec any) (*recordEncoder, error) {
	e := &recordEncoder{}
	e.enc = gob.NewEncoder(&e.out)
	if err := e.enc.Encode(rec); err != nil {
		return nil, err
	}
	first := bytes.Clone(e.out.Bytes())
	e.out.Reset()
	if err := e.enc.Encode(rec); err != nil {
		return nil, err
	}
	n := len(first) - e.out.Len()
	if n <= 0 {
		return nil, errors.New("gob sent no type descriptors")
	}
	e.head = first[:n]
	back := reflect.New(reflect.TypeOf(rec))
	if err := gob.NewDecoder(bytes.NewReader(e.entry())).DecodeValue(back); err != nil {
		return nil, fmt.Errorf("a record's descriptors and value do not read back: %w", err)
	}
	return e, nil
}

// entry is the last value encoded, with its type's descriptors.
func (e *recordEncoder) entry() []byte {
	return append(append(make([]byte, 0, len(e.head)+e.out.Len()), e.head...), e.out.Bytes()...)
}

// Missing is the spool's missing/ directory.
func (s Spool) Missing() *Missing { return &Missing{dir: filepath.Join(s.root, "missing")} }

// file is where an earlier agent kept pid's record.
func (m *Missing) file(pid int) string { return filepath.Join(m.dir, strconv.Itoa(pid)+".gob") }

func (m *Missing) journalPath() string { return filepath.Join(m.dir, "journal") }

// A journal entry: its payload's length, what it does, the pid, then the
// payload (a put's gob; a remove has none).
const (
	entryHead = 4 + 1 + 8
	opPut     = 'P'
	opRemove  = 'R'
	// compactAt is the size past which a journal with no live record
	// starts over; rewriteAt the size past which one is rewritten with
	// its live records only (a crash loop that keeps one pending always).
	compactAt = 64 << 10
	rewriteAt = 1 << 20
	// maxRecord bounds a put's payload (an event with its stacks is a
	// few KiB): a longer length is a torn or foreign journal's.
	maxRecord = 1 << 20
)

// Put records pid's crash, rec gob-encoded (as a fresh encoder writes it).
func (m *Missing) Put(pid int, rec any) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	payload, err := m.encode(rec)
	if err != nil {
		return err
	}
	b := make([]byte, entryHead, entryHead+len(payload))
	binary.LittleEndian.PutUint32(b, uint32(len(payload)))
	b[4] = opPut
	binary.LittleEndian.PutUint64(b[5:], uint64(pid))
	if err := m.append(append(b, payload...)); err != nil {
		return err
	}
	m.live[pid] = true
	return nil
}

// encode is rec's gob, with its type's descriptors (under mu).
func (m *Missing) encode(rec any) ([]byte, error) {
	t := reflect.TypeOf(rec)
	e := m.enc[t]
	if e == nil {
		var err error
		if e, err = newRecordEncoder(rec); err != nil {
			return nil, fmt.Errorf("encode a crash waiting for its bundle: %w", err)
		}
		if m.enc == nil {
			m.enc = map[reflect.Type]*recordEncoder{}
		}
		m.enc[t] = e
	}
	e.out.Reset()
	if err := e.enc.Encode(rec); err != nil {
		return nil, fmt.Errorf("encode a crash waiting for its bundle: %w", err)
	}
	return e.entry(), nil
}

// Remove forgets pid's record: its bundle came, or its "missing" bundle
// was written. A journal left with no live record starts over once it
// is large.
func (m *Missing) Remove(pid int) {
	os.Remove(m.file(pid))
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.open(); err != nil || !m.live[pid] {
		return
	}
	var e [entryHead]byte
	e[4] = opRemove
	binary.LittleEndian.PutUint64(e[5:], uint64(pid))
	if m.append(e[:]) != nil {
		return
	}
	delete(m.live, pid)
	st, err := m.journal.Stat()
	switch {
	case err != nil:
	case len(m.live) == 0 && st.Size() > compactAt:
		m.journal.Truncate(0)
	case st.Size() > rewriteAt:
		if err := m.rewrite(); err != nil {
			m.journal.Close()
			m.journal = nil // reopened, and its live records read again, at the next change
		}
	}
}

// rewrite replaces the journal with its live records only (under mu).
func (m *Missing) rewrite() error {
	recs, _, err := m.read()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	for pid, rec := range recs {
		var head [entryHead]byte
		binary.LittleEndian.PutUint32(head[:], uint32(len(rec)))
		head[4] = opPut
		binary.LittleEndian.PutUint64(head[5:], uint64(pid))
		buf.Write(head[:])
		buf.Write(rec)
	}
	if err := write(m.journalPath(), buf.Bytes()); err != nil {
		return err
	}
	f, err := os.OpenFile(m.journalPath(), os.O_WRONLY|os.O_APPEND, fileMode)
	if err != nil {
		return err
	}
	m.journal.Close()
	m.journal = f
	return nil
}

// PIDs lists the processes that have a record.
func (m *Missing) PIDs() []int {
	recs, _ := m.replay()
	seen := map[int]bool{}
	var pids []int
	for pid := range recs {
		seen[pid] = true
		pids = append(pids, pid)
	}
	entries, _ := os.ReadDir(m.dir)
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".gob")
		if pid, err := strconv.Atoi(name); ok && err == nil && !seen[pid] {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Get decodes pid's record into rec, a pointer to the type Put was given:
// the journal's last, else an earlier agent's file.
func (m *Missing) Get(pid int, rec any) error {
	recs, err := m.replay()
	if err != nil {
		return err
	}
	data, ok := recs[pid]
	if !ok {
		if data, err = os.ReadFile(m.file(pid)); err != nil {
			return err
		}
	}
	return gob.NewDecoder(bytes.NewReader(data)).Decode(rec)
}

// open opens the journal for appending and learns which of its records
// are live (under mu). A torn last entry is cut off, or what follows it
// would never be read.
func (m *Missing) open() error {
	if m.journal != nil {
		return nil
	}
	recs, good, err := m.read()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(m.dir, dirMode); err != nil {
		return err
	}
	f, err := os.OpenFile(m.journalPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, fileMode)
	if err != nil {
		return fmt.Errorf("open the spool's journal of crashes waiting for their bundle: %w", err)
	}
	if st, err := f.Stat(); err == nil && st.Size() > good {
		f.Truncate(good)
	}
	m.journal, m.live = f, map[int]bool{}
	for pid := range recs {
		m.live[pid] = true
	}
	return nil
}

// append writes one entry in a single write, so that a worker killed
// meanwhile leaves it whole or absent (under mu).
func (m *Missing) append(entry []byte) error {
	if err := m.open(); err != nil {
		return err
	}
	_, err := m.journal.Write(entry)
	return err
}

// replay reads the journal: each live pid's last record.
func (m *Missing) replay() (map[int][]byte, error) {
	recs, _, err := m.read()
	return recs, err
}

// read replays the journal and says how many of its bytes are whole
// entries: a torn last entry (a full disk cut its write) ends it.
func (m *Missing) read() (recs map[int][]byte, good int64, err error) {
	data, err := os.ReadFile(m.journalPath())
	if errors.Is(err, fs.ErrNotExist) {
		return map[int][]byte{}, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read the spool's journal of crashes waiting for their bundle: %w", err)
	}
	recs = map[int][]byte{}
	for len(data) >= entryHead {
		n := binary.LittleEndian.Uint32(data)
		op, pid := data[4], int(binary.LittleEndian.Uint64(data[5:]))
		if n > maxRecord || int(n) > len(data)-entryHead {
			break
		}
		switch op {
		case opPut:
			recs[pid] = data[entryHead : entryHead+int(n)]
		case opRemove:
			delete(recs, pid)
		}
		data = data[entryHead+int(n):]
		good += entryHead + int64(n)
	}
	return recs, good, nil
}
