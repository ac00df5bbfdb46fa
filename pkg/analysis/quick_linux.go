package analysis

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/proc"
)

// Result is what the helper learns of a crash before its core is stored.
type Result struct {
	Frames    []bundle.Frame
	Title     string
	Signature string
	// ExeID is the executable's build-id, or its base name without one.
	ExeID string
	// Reason says why there are no frames, when there are none.
	Reason string
	// Warnings says which frames are unnamed because their file could not
	// be read within the analysis limits.
	Warnings []string
}

// Live analyses a crashed process the kernel still holds (it is dumping its
// core): regs from the core's first bytes, a frame-pointer walk through
// /proc/PID/mem, names from the mapped files through /proc/PID/map_files,
// which reach the exact files mapped even when they were deleted or
// replaced. It needs no debugger and costs a few milliseconds.
func Live(pid int, signal string, regs Regs, regsErr error) Result {
	return live(pid, signal, func(dir string) ([]uint64, string) {
		if regsErr != nil {
			return nil, fmt.Sprintf("no registers: %v", regsErr)
		}
		mem, err := proc.Open(filepath.Join(dir, "mem"))
		if err != nil {
			return nil, fmt.Sprintf("open mem: %v", err)
		}
		defer mem.Close()
		return WalkFrames(regs, mem), ""
	})
}

// LiveStack analyses a crashed process from the user stack the eBPF
// observer took at its fatal signal (the kernel's own frame-pointer walk
// from the same registers the core's first note holds): the coredump
// socket intake decides on a crash before the kernel dumps a byte of it.
// Its memory is not read.
func LiveStack(pid int, signal string, pcs []uint64) Result {
	return live(pid, signal, func(string) ([]uint64, string) {
		if len(pcs) == 0 {
			return nil, "no registers: the eBPF event has no user stack"
		}
		return pcs, ""
	})
}

// live symbolises the frames walk gives, PC first, through the live
// process's mappings (walk's reason, when it gives none, says why).
func live(pid int, signal string, walk func(dir string) (pcs []uint64, reason string)) Result {
	dir := fmt.Sprintf("/proc/%d", pid)
	var r Result
	if exe, err := proc.Open(filepath.Join(dir, "exe")); err == nil {
		r.ExeID = BuildID(exe)
		exe.Close()
	}
	if r.ExeID == "" {
		if target, err := os.Readlink(filepath.Join(dir, "exe")); err == nil {
			r.ExeID = filepath.Base(target)
		}
	}
	pcs, reason := walk(dir)
	var maps []Mapping
	var err error
	if reason == "" {
		// What the symbolizer looks up: each pc, and the call before
		// each return address.
		addrs := make([]uint64, 0, 2*len(pcs))
		for i, pc := range pcs {
			addrs = append(addrs, pc)
			if i > 0 && pc > 0 {
				addrs = append(addrs, pc-1)
			}
		}
		maps, err = liveMappings(dir, addrs)
	}
	switch {
	case reason != "":
		r.Reason = reason
	case err != nil:
		r.Reason = fmt.Sprintf("read maps: %v", err)
	default:
		sym := NewSymbolizer(maps, func(m Mapping) (io.ReaderAt, io.Closer, error) {
			f, err := proc.Open(filepath.Join(dir, "map_files", fmt.Sprintf("%x-%x", m.Start, m.End)))
			return f, f, err
		})
		look := make([]Lookup, len(pcs))
		for i, pc := range pcs {
			look[i] = Lookup{Addr: pc, Ret: i > 0}
		}
		r.Frames = sym.Frames(look)
		for i := 1; i < len(pcs); i++ {
			// Go's signal handler makes the faulting pc the return
			// address of a call to runtime.sigpanic: it is the fault
			// itself, not a call's return.
			if r.Frames[i-1].Function == "runtime.sigpanic" {
				r.Frames[i] = sym.Frames([]Lookup{{Addr: pcs[i]}})[0]
			}
		}
		r.Warnings = sym.Warnings()
	}
	r.Title = Title(signal, r.Frames)
	r.Signature = Signature(r.ExeID, signal, r.Frames)
	return r
}
