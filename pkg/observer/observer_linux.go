// Package observer loads corecatch's eBPF programs and turns what they see
// into Events: one per process-fatal signal as the kernel delivers it (before
// any core streams), and one when that process's last thread has exited,
// saying whether a core was dumped. The agent uses the first to freeze a
// container in time and to join the core that follows, and both to count
// deaths that leave no core (SIGKILL, OOM kills, skipped dumps).
package observer

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Mode names the program an Observer runs.
type Mode string

// The two programs: tp_btf/signal_deliver with CO-RE reads (every field)
// and, for kernels without BTF, the classic tracepoint with fewer fields.
const (
	ModeBTF        Mode = "tp_btf"
	ModeTracepoint Mode = "tracepoint"
)

// DefaultCoreSignals are the signals whose default action dumps core.
var DefaultCoreSignals = []syscall.Signal{
	unix.SIGQUIT, unix.SIGILL, unix.SIGTRAP, unix.SIGABRT, unix.SIGBUS, unix.SIGFPE,
	unix.SIGSEGV, unix.SIGXCPU, unix.SIGXFSZ, unix.SIGSYS,
}

// DefaultFatalSignals are the signals whose default action terminates
// without a core. SIGKILL covers OOM kills.
var DefaultFatalSignals = []syscall.Signal{
	unix.SIGHUP, unix.SIGINT, unix.SIGKILL, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPIPE,
	unix.SIGALRM, unix.SIGTERM, unix.SIGSTKFLT, unix.SIGVTALRM, unix.SIGPROF, unix.SIGIO, unix.SIGPWR,
}

// Options configure Load.
type Options struct {
	// CoreSignals and FatalSignals replace the default sets when non-nil.
	CoreSignals, FatalSignals []syscall.Signal
	// Mode forces a program; empty picks tp_btf when the kernel has BTF.
	Mode Mode
	// Senders names who sent the signal when the kernel marked a whole
	// process for death (kill -9, SIGTERM without a handler), which
	// delivery alone cannot tell. It attaches a second program to
	// signal_generate, which runs for every signal sent on the node: on
	// this project's VM (retpolines) it adds about 3% to a storm of
	// handled signals, so it is off by default. tp_btf mode only.
	Senders bool
	// Buffer is how many decoded events may wait for the consumer before
	// new ones are dropped (and counted); 0 means 4096.
	Buffer int
}

// Stats counts what did not reach the consumer.
type Stats struct {
	// Lost events never left the kernel: the ring buffer was full.
	Lost uint64
	// Dropped events were read but the consumer was too slow.
	Dropped uint64
	// Undecodable records were too short to be events.
	Undecodable uint64
}

// Observer is the loaded, attached programs and the reader of their events.
type Observer struct {
	mode    Mode
	objs    interface{ Close() error }
	lostMap *ebpf.Map
	links   []link.Link
	rd      *ringbuf.Reader
	events  chan Event
	offset  time.Duration // wall clock minus CLOCK_MONOTONIC
	dropped atomic.Uint64
	bad     atomic.Uint64
	// onCore is OnCore's function, nil until it is set.
	onCore atomic.Pointer[func(Event)]
	done   sync.WaitGroup
	close  sync.Once
}

func mask(sigs []syscall.Signal) (uint64, error) {
	var m uint64
	for _, s := range sigs {
		if s < 1 || s > 64 {
			return 0, fmt.Errorf("signal %d is not between 1 and 64", s)
		}
		m |= 1 << (s - 1)
	}
	return m, nil
}

// Load checks what the kernel offers, loads the right program, attaches it
// and starts reading. Its errors say which requirement is missing.
func Load(o Options) (*Observer, error) {
	if o.CoreSignals == nil {
		o.CoreSignals = DefaultCoreSignals
	}
	if o.FatalSignals == nil {
		o.FatalSignals = DefaultFatalSignals
	}
	coreMask, err := mask(o.CoreSignals)
	if err != nil {
		return nil, fmt.Errorf("core signals: %w", err)
	}
	fatalMask, err := mask(o.FatalSignals)
	if err != nil {
		return nil, fmt.Errorf("fatal signals: %w", err)
	}
	if o.Buffer == 0 {
		o.Buffer = 4096
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK for eBPF maps: %w (run the agent as root, or with CAP_SYS_RESOURCE on kernels before 5.11)", err)
	}
	if err := features.HaveMapType(ebpf.RingBuf); err != nil {
		return nil, fmt.Errorf("this kernel has no BPF ring buffer (Linux 5.8 or later is needed): %w", err)
	}
	if o.Mode == "" {
		o.Mode = ModeBTF
		if _, err := btf.LoadKernelSpec(); err != nil {
			o.Mode = ModeTracepoint
		}
	}
	ob := &Observer{mode: o.Mode, events: make(chan Event, o.Buffer), offset: clockOffset()}
	var events *ebpf.Map
	switch o.Mode {
	case ModeBTF:
		events, err = ob.loadBTF(coreMask, fatalMask, o.Senders)
	case ModeTracepoint:
		events, err = ob.loadTracepoint(coreMask, fatalMask)
	default:
		err = fmt.Errorf("unknown observer mode %q (use %s or %s)", o.Mode, ModeBTF, ModeTracepoint)
	}
	if err != nil {
		ob.Close()
		return nil, err
	}
	if ob.rd, err = ringbuf.NewReader(events); err != nil {
		ob.Close()
		return nil, fmt.Errorf("read the event ring buffer: %w", err)
	}
	ob.done.Add(1)
	go ob.read()
	return ob, nil
}

// explain turns a load or attach error into what the user should check.
func explain(what string, err error) error {
	var ve *ebpf.VerifierError
	switch {
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: %w (eBPF needs root, or CAP_BPF and CAP_PERFMON; in a pod: privileged, or those capabilities)", what, err)
	case errors.As(err, &ve):
		return fmt.Errorf("%s: the kernel's verifier refused the program (kernel %s): %w", what, kernelRelease(), err)
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("%s: not supported by kernel %s: %w", what, kernelRelease(), err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func (ob *Observer) loadBTF(coreMask, fatalMask uint64, senders bool) (*ebpf.Map, error) {
	spec, err := loadBtf()
	if err != nil {
		return nil, err
	}
	if err := setMasks(spec, coreMask, fatalMask); err != nil {
		return nil, err
	}
	var objs btfObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, explain("load the tp_btf observer (needs kernel BTF, /sys/kernel/btf/vmlinux)", err)
	}
	ob.objs, ob.lostMap = &objs, objs.Lost
	progs := []*ebpf.Program{objs.OnSignalDeliver, objs.OnSchedProcessExit}
	if senders {
		progs = append(progs, objs.OnSignalGenerate)
	}
	for _, p := range progs {
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			return nil, explain("attach "+p.String(), err)
		}
		ob.links = append(ob.links, l)
	}
	return objs.Events, nil
}

func (ob *Observer) loadTracepoint(coreMask, fatalMask uint64) (*ebpf.Map, error) {
	if err := mountTracefs(); err != nil {
		return nil, err
	}
	spec, err := loadTracepoint()
	if err != nil {
		return nil, err
	}
	if err := setMasks(spec, coreMask, fatalMask); err != nil {
		return nil, err
	}
	var objs tracepointObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, explain("load the tracepoint observer", err)
	}
	ob.objs, ob.lostMap = &objs, objs.Lost
	l, err := link.Tracepoint("signal", "signal_deliver", objs.OnSignalDeliverTp, nil)
	if err != nil {
		return nil, explain("attach tracepoint signal/signal_deliver (needs tracefs)", err)
	}
	ob.links = append(ob.links, l)
	return objs.Events, nil
}

// mountTracefs mounts tracefs where classic tracepoints resolve their ids,
// when nothing is mounted there (kernel.md: not mounted at boot here).
func mountTracefs() error {
	for _, dir := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		if _, err := os.Stat(dir + "/events"); err == nil {
			return nil
		}
	}
	if err := unix.Mount("nodev", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
		return fmt.Errorf("mount tracefs on /sys/kernel/tracing for the classic tracepoint: %w", err)
	}
	return nil
}

func setMasks(spec *ebpf.CollectionSpec, coreMask, fatalMask uint64) error {
	for name, v := range map[string]uint64{"core_mask": coreMask, "fatal_mask": fatalMask} {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("the BPF object lacks %s: rebuild it with make generate", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// clockOffset is how far the wall clock is ahead of CLOCK_MONOTONIC, which
// bpf_ktime_get_ns reads.
func clockOffset() time.Duration {
	var mono, wall unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono)
	unix.ClockGettime(unix.CLOCK_REALTIME, &wall)
	return time.Duration(wall.Nano() - mono.Nano())
}

// read decodes records until the reader is closed. It never waits for the
// consumer: a full channel drops the event and counts it.
func (ob *Observer) read() {
	Urgent() // best effort: a freeze waits for this event
	defer ob.done.Done()
	defer close(ob.events)
	var rec ringbuf.Record
	for {
		if err := ob.rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		if len(rec.RawSample) < int(unsafe.Sizeof(btfEvent{})) {
			ob.bad.Add(1)
			continue
		}
		// The record is the C struct event, in host byte order and
		// layout (bpf2go's btfEvent mirrors it).
		raw := (*btfEvent)(unsafe.Pointer(&rec.RawSample[0]))
		ev := decode(raw, ob.offset)
		if f := ob.onCore.Load(); f != nil && ev.Kind == KindCore {
			(*f)(ev)
			ev.OnCore = true
		}
		select {
		case ob.events <- ev:
		default:
			ob.dropped.Add(1)
		}
	}
}

// OnCore makes the reader call f with each core event as it decodes it,
// on its own real-time thread, before the event is queued for Events:
// what must follow a crash at once (the freeze of its container) starts
// without waiting for the consumer's goroutine to be scheduled, a wait
// that a loaded node stretches to tens of milliseconds. f must not block.
func (ob *Observer) OnCore(f func(Event)) { ob.onCore.Store(&f) }

// Events delivers decoded events; it is closed by Close.
func (ob *Observer) Events() <-chan Event { return ob.events }

// Mode says which program runs.
func (ob *Observer) Mode() Mode { return ob.mode }

// Stats reads the loss counters.
func (ob *Observer) Stats() Stats {
	s := Stats{Dropped: ob.dropped.Load(), Undecodable: ob.bad.Load()}
	if ob.lostMap != nil {
		var perCPU []uint64
		if err := ob.lostMap.Lookup(uint32(0), &perCPU); err == nil {
			for _, n := range perCPU {
				s.Lost += n
			}
		}
	}
	return s
}

// Close detaches the programs, stops the reader and frees the maps. Events
// already decoded stay readable from Events until it is drained.
func (ob *Observer) Close() error {
	var errs []error
	ob.close.Do(func() {
		for _, l := range ob.links {
			errs = append(errs, l.Close())
		}
		if ob.rd != nil {
			errs = append(errs, ob.rd.Close())
			ob.done.Wait()
		}
		if ob.objs != nil {
			errs = append(errs, ob.objs.Close())
		}
	})
	return errors.Join(errs...)
}
