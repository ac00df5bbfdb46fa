package observer

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// Kind says what an Event reports.
type Kind uint8

// The kinds, as bpf/observer.h numbers them.
const (
	// KindCore is a core-dumping signal with its default action: a core
	// is about to stream into the pipe helper.
	KindCore Kind = 1
	// KindFatal is a terminating signal that dumps no core (SIGKILL, OOM
	// kills, SIGTERM without a handler).
	KindFatal Kind = 2
	// KindExit is the last thread of a process reported before exiting;
	// Outcome says whether the kernel dumped its core.
	KindExit Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindCore:
		return "core"
	case KindFatal:
		return "fatal"
	case KindExit:
		return "exit"
	}
	return fmt.Sprintf("kind%d", uint8(k))
}

// Outcomes of an exit event.
const (
	// OutcomeCoreDumped: the kernel wrote the core (exit_code & 0x80).
	OutcomeCoreDumped = "core_dumped"
	// OutcomeCoreMissing: a core signal killed the process, but no core was
	// dumped (the dump was skipped or failed: core_pipe_limit reached,
	// RLIMIT_CORE of 1, a helper that could not start, an unwritable file).
	OutcomeCoreMissing = "core_missing"
	// OutcomeKilled: a fatal signal without a core ended the process.
	OutcomeKilled = "killed"
)

// Frame is one user stack frame as the kernel resolved it: a build-id and
// an offset into that object when it could, the address otherwise.
type Frame struct {
	BuildID string `json:"build_id,omitempty"`
	Offset  uint64 `json:"offset,omitempty"`
	IP      uint64 `json:"ip,omitempty"`
}

// Event is one observation. Fields a program could not fill are zero.
type Event struct {
	Time      time.Time
	Monotonic time.Duration
	Kind      Kind
	TGID, TID int
	NSPID     int
	Comm      string
	Signal    int
	SiCode    int
	FaultAddr uint64
	SenderPID int
	// CgroupID is the cgroup v2 id (the inode of the cgroup's directory in
	// the unified hierarchy); CgroupV1ID that of the v1 freezer cgroup.
	CgroupID, CgroupV1ID uint64
	MntNS, PidNS         uint32
	ExeIno               uint64
	ExeDev               uint32
	Stack                []uint64
	BuildIDStack         []Frame
	// OnCore says that OnCore's function saw this core event before it
	// was queued; a core event decoded before that was set was not.
	OnCore bool
	// FromSiginfo is true when si_code and the sender are known: from the
	// siginfo at delivery, or, when the kernel had already marked the
	// process for death (GroupExit; the signal is then the group's exit
	// signal), from the signal's generation in the sender. A sender_pid
	// of 0 with si_code 0x80 (SI_KERNEL) is the kernel itself, such as the
	// OOM killer.
	FromSiginfo, GroupExit bool
	// OOM is true when the OOM killer chose the process.
	OOM bool
	// Exit events: the exit code and what it says.
	ExitCode int
	Outcome  string
}

func decode(r *btfEvent, offset time.Duration) Event {
	e := Event{
		Monotonic: time.Duration(r.KtimeNs),
		Kind:      Kind(r.Kind),
		TGID:      int(r.Tgid), TID: int(r.Tid), NSPID: int(r.NsPid),
		Signal: int(r.Signal), SiCode: int(r.SiCode), FaultAddr: r.FaultAddr, SenderPID: int(r.SenderPid),
		CgroupID: r.CgroupId, CgroupV1ID: r.CgroupV1Id, MntNS: r.MntNs, PidNS: r.PidNs,
		ExeIno: r.ExeIno, ExeDev: r.ExeDev,
		FromSiginfo: r.Flags&(1|16) != 0, GroupExit: r.Flags&2 != 0, OOM: r.Flags&4 != 0,
		ExitCode: int(r.ExitCode),
	}
	e.Time = time.Unix(0, int64(r.KtimeNs)+int64(offset)).UTC()
	comm := make([]byte, 0, len(r.Comm))
	for _, c := range r.Comm {
		if c == 0 {
			break
		}
		comm = append(comm, byte(c))
	}
	e.Comm = string(comm)
	for _, ip := range r.Stack[:min(int(r.StackLen), len(r.Stack))] {
		e.Stack = append(e.Stack, ip)
	}
	for _, f := range r.BuildId[:min(int(r.BuildIdLen), len(r.BuildId))] {
		switch f.Status {
		case 1: // BPF_STACK_BUILD_ID_VALID
			e.BuildIDStack = append(e.BuildIDStack, Frame{BuildID: hex.EncodeToString(f.BuildId[:]), Offset: f.Offset})
		case 2: // BPF_STACK_BUILD_ID_IP
			e.BuildIDStack = append(e.BuildIDStack, Frame{IP: f.Offset})
		}
	}
	if e.Kind == KindExit {
		switch {
		case r.Flags&8 != 0:
			e.Outcome = OutcomeCoreDumped
		case Kind(r.ReportedKind) == KindCore:
			e.Outcome = OutcomeCoreMissing
		default:
			e.Outcome = OutcomeKilled
		}
	}
	return e
}

func hexAddr(a uint64) string { return fmt.Sprintf("0x%x", a) }

// MarshalJSON writes the event as `corecatch trace --json` prints it, with
// snake_case keys and addresses as hex strings.
func (e Event) MarshalJSON() ([]byte, error) {
	stack := make([]string, len(e.Stack))
	for i, a := range e.Stack {
		stack[i] = hexAddr(a)
	}
	comm, commRaw := bundle.Text([]byte(e.Comm))
	type frame struct {
		BuildID string `json:"build_id,omitempty"`
		Offset  string `json:"offset,omitempty"`
		IP      string `json:"ip,omitempty"`
	}
	var frames []frame
	for _, f := range e.BuildIDStack {
		if f.BuildID != "" {
			frames = append(frames, frame{BuildID: f.BuildID, Offset: hexAddr(f.Offset)})
		} else {
			frames = append(frames, frame{IP: hexAddr(f.IP)})
		}
	}
	return json.Marshal(struct {
		Time         time.Time `json:"time"`
		MonotonicNS  int64     `json:"monotonic_ns"`
		Kind         string    `json:"kind"`
		TGID         int       `json:"tgid"`
		TID          int       `json:"tid"`
		NSPID        int       `json:"ns_pid"`
		Comm         string    `json:"comm"`
		CommRaw      []byte    `json:"comm_raw,omitempty"`
		Signal       int       `json:"signal"`
		SignalName   string    `json:"signal_name"`
		SiCode       int       `json:"si_code"`
		FaultAddr    string    `json:"fault_addr"`
		SenderPID    int       `json:"sender_pid"`
		CgroupID     uint64    `json:"cgroup_id"`
		CgroupV1ID   uint64    `json:"cgroup_v1_id,omitempty"`
		MntNS        uint32    `json:"mnt_ns,omitempty"`
		PidNS        uint32    `json:"pid_ns,omitempty"`
		ExeIno       uint64    `json:"exe_ino,omitempty"`
		ExeDev       uint32    `json:"exe_dev,omitempty"`
		OOM          bool      `json:"oom,omitempty"`
		GroupExit    bool      `json:"group_exit,omitempty"`
		Stack        []string  `json:"stack"`
		BuildIDStack []frame   `json:"build_id_stack,omitempty"`
		ExitCode     *int      `json:"exit_code,omitempty"`
		Outcome      string    `json:"outcome,omitempty"`
	}{
		Time: e.Time, MonotonicNS: int64(e.Monotonic), Kind: e.Kind.String(), TGID: e.TGID, TID: e.TID, NSPID: e.NSPID,
		Comm: comm, CommRaw: commRaw, Signal: e.Signal, SignalName: bundle.SignalName(e.Signal),
		SiCode: e.SiCode, FaultAddr: hexAddr(e.FaultAddr), SenderPID: e.SenderPID,
		CgroupID: e.CgroupID, CgroupV1ID: e.CgroupV1ID, MntNS: e.MntNS, PidNS: e.PidNS,
		ExeIno: e.ExeIno, ExeDev: e.ExeDev, OOM: e.OOM, GroupExit: e.GroupExit,
		Stack: stack, BuildIDStack: frames, ExitCode: e.exitCode(), Outcome: e.Outcome,
	})
}

func (e Event) exitCode() *int {
	if e.Kind != KindExit {
		return nil
	}
	return &e.ExitCode
}

// String renders the event on one line for people.
func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-5s %d/%d %q %s", e.Time.Local().Format("15:04:05.000"), e.Kind, e.TGID, e.TID, e.Comm, bundle.SignalName(e.Signal))
	switch {
	case e.Kind == KindExit:
		fmt.Fprintf(&b, " exit_code=%#x %s", e.ExitCode, e.Outcome)
	case e.FromSiginfo && e.SiCode > 0:
		fmt.Fprintf(&b, " code=%d addr=%s", e.SiCode, hexAddr(e.FaultAddr))
	case e.FromSiginfo:
		fmt.Fprintf(&b, " code=%d from pid %d", e.SiCode, e.SenderPID)
	case e.SiCode != 0:
		fmt.Fprintf(&b, " code=%d", e.SiCode)
	}
	if e.OOM {
		b.WriteString(" oom")
	}
	fmt.Fprintf(&b, " cgroup=%d", e.CgroupID)
	return b.String()
}

// Bundle renders the event as a bundle's ebpf section.
func (e Event) Bundle() *bundle.EBPF {
	b := &bundle.EBPF{
		Time: e.Time, Signal: e.Signal, SiCode: e.SiCode, FaultAddr: hexAddr(e.FaultAddr),
		SenderPID: e.SenderPID, CgroupID: e.CgroupID, CgroupV1ID: e.CgroupV1ID,
	}
	for _, a := range e.Stack {
		b.Stack = append(b.Stack, hexAddr(a))
	}
	return b
}
