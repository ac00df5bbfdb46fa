package analysis

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
)

// Regs are the registers of the thread that took the fatal signal, the
// start of every unwind: the kernel writes that thread's NT_PRSTATUS note
// first, at the start of the core's PT_NOTE segment, so the first bytes of
// the stream carry them before any memory.
type Regs struct {
	Machine elf.Machine
	PC      uint64
	SP      uint64
	// FP is the frame pointer (rbp, x29); LR the link register (arm64).
	FP uint64
	LR uint64
	// Signal is the signal that killed the thread (pr_info.si_signo):
	// the coredump socket passes none, and its eBPF event may be lost.
	Signal int
}

// prstatus layouts: where pr_reg starts in the note, and each register's
// index in it.
var prstatus = map[elf.Machine]struct{ regs, pc, sp, fp, lr int }{
	// elf_prstatus: 112 bytes of siginfo, signal sets, pids and times;
	// user_regs_struct: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx
	// rsi rdi orig_rax rip cs eflags rsp ...
	elf.EM_X86_64: {regs: 112, pc: 16, sp: 19, fp: 4, lr: -1},
	// user_pt_regs: x0..x30, sp, pc, pstate.
	elf.EM_AARCH64: {regs: 112, pc: 32, sp: 31, fp: 29, lr: 30},
}

// ErrNeedMore means the head given is too short: HeadRegs says how long it
// must be.
var ErrNeedMore = errors.New("need more of the core")

// HeadRegs reads the crashing thread's registers from the first bytes of a
// 64-bit little-endian ELF core. When head is too short it returns
// ErrNeedMore and how many bytes it needs; other errors mean the head is not
// a core it can read.
func HeadRegs(head []byte) (Regs, int, error) {
	if len(head) < 64 {
		return Regs{}, 64, ErrNeedMore
	}
	if string(head[:4]) != "\x7fELF" || head[4] != 2 || head[5] != 1 {
		return Regs{}, 0, errors.New("not a 64-bit little-endian ELF core")
	}
	bo := binary.LittleEndian
	mach := elf.Machine(bo.Uint16(head[18:]))
	layout, ok := prstatus[mach]
	if !ok || elf.Type(bo.Uint16(head[16:])) != elf.ET_CORE {
		return Regs{}, 0, errors.New("a core of an unsupported machine")
	}
	phoff, phentsize, phnum := bo.Uint64(head[32:]), int(bo.Uint16(head[54:])), int(bo.Uint16(head[56:]))
	if phentsize < 56 || phoff > 1<<24 {
		return Regs{}, 0, errors.New("odd program headers")
	}
	if phnum == 0xffff { // PN_XNUM: the real count is in section 0; PT_NOTE is first anyway
		phnum = 1
	}
	var noteOff, noteSize uint64
	for i := range phnum {
		off := int(phoff) + i*phentsize
		if off+phentsize > len(head) {
			return Regs{}, off + phentsize, ErrNeedMore
		}
		ph := head[off:]
		if elf.ProgType(bo.Uint32(ph)) == elf.PT_NOTE {
			noteOff, noteSize = bo.Uint64(ph[8:]), bo.Uint64(ph[32:])
			break
		}
	}
	if noteSize == 0 {
		return Regs{}, 0, errors.New("no PT_NOTE segment")
	}
	// The first note is the crashing thread's NT_PRSTATUS: its header,
	// "CORE\0" padded to 8, then the registers.
	need := int(noteOff) + 12 + 8 + layout.regs + 8*(max(layout.pc, layout.sp, layout.fp, layout.lr)+1)
	if noteOff > 1<<24 {
		return Regs{}, 0, errors.New("notes too far into the core")
	}
	if need > len(head) {
		return Regs{}, need, ErrNeedMore
	}
	n := head[noteOff:]
	if elf.NType(bo.Uint32(n[8:])) != elf.NT_PRSTATUS || bo.Uint32(n) != 5 {
		return Regs{}, 0, errors.New("the first note is not NT_PRSTATUS")
	}
	regs := n[12+8+layout.regs:]
	reg := func(i int) uint64 {
		if i < 0 {
			return 0
		}
		return bo.Uint64(regs[8*i:])
	}
	// elf_prstatus opens with the signal's siginfo: si_signo first.
	signal := int(bo.Uint32(n[12+8:]))
	return Regs{Machine: mach, PC: reg(layout.pc), SP: reg(layout.sp), FP: reg(layout.fp), LR: reg(layout.lr), Signal: signal}, 0, nil
}

// maxFrames bounds a frame-pointer walk.
const maxFrames = 64

// WalkFrames follows the frame-pointer chain from regs through the
// process's memory and returns the return addresses, the PC first. It is
// exact where code keeps frame pointers (Go, most distribution binaries
// built with -fno-omit-frame-pointer, -O0 builds) and stops at the first
// frame that does not look like one: a corrupt or frame-pointer-less stack
// gives a short walk, never a wrong long one.
func WalkFrames(regs Regs, mem io.ReaderAt) []uint64 {
	pcs := []uint64{regs.PC}
	if regs.Machine == elf.EM_AARCH64 && regs.LR != 0 {
		// A leaf may not have saved its link register yet: the caller is
		// in LR, and the frame record at FP names the caller's caller.
		pcs = append(pcs, regs.LR)
	}
	fp := regs.FP
	var buf [16]byte
	for len(pcs) < maxFrames && fp != 0 && fp%8 == 0 && fp >= regs.SP {
		if _, err := mem.ReadAt(buf[:], int64(fp)); err != nil {
			break
		}
		next, ret := binary.LittleEndian.Uint64(buf[:]), binary.LittleEndian.Uint64(buf[8:])
		if ret == 0 {
			break
		}
		if len(pcs) < 2 || pcs[len(pcs)-1] != ret {
			pcs = append(pcs, ret)
		}
		if next <= fp || next-fp > 1<<24 {
			break // stacks grow down: callers' frames are above
		}
		fp = next
	}
	return pcs
}
