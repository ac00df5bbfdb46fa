package analysis

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime"
	"testing"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// core builds the head of an x86-64 core: the ELF header, one PT_NOTE
// program header and an NT_PRSTATUS note whose registers are rip, rsp, rbp.
func core(rip, rsp, rbp uint64) []byte {
	bo := binary.LittleEndian
	h := make([]byte, 64+56)
	copy(h, "\x7fELF\x02\x01\x01")
	bo.PutUint16(h[16:], uint16(elf.ET_CORE))
	bo.PutUint16(h[18:], uint16(elf.EM_X86_64))
	bo.PutUint64(h[32:], 64) // phoff
	bo.PutUint16(h[54:], 56)
	bo.PutUint16(h[56:], 1)
	desc := make([]byte, 112+27*8)
	bo.PutUint64(desc[112+16*8:], rip)
	bo.PutUint64(desc[112+19*8:], rsp)
	bo.PutUint64(desc[112+4*8:], rbp)
	note := make([]byte, 12+8)
	bo.PutUint32(note, 5)
	bo.PutUint32(note[4:], uint32(len(desc)))
	bo.PutUint32(note[8:], uint32(elf.NT_PRSTATUS))
	copy(note[12:], "CORE")
	note = append(note, desc...)
	ph := h[64:]
	bo.PutUint32(ph, uint32(elf.PT_NOTE))
	bo.PutUint64(ph[8:], uint64(len(h)))
	bo.PutUint64(ph[32:], uint64(len(note)))
	return append(h, note...)
}

func TestHeadRegs(t *testing.T) {
	head := core(0x401136, 0x7ffd0000, 0x7ffd0040)
	regs, _, err := HeadRegs(head)
	if err != nil || regs.PC != 0x401136 || regs.SP != 0x7ffd0000 || regs.FP != 0x7ffd0040 || regs.Machine != elf.EM_X86_64 {
		t.Fatalf("HeadRegs = %+v, %v", regs, err)
	}
	for _, n := range []int{0, 63, 100, 200} {
		_, need, err := HeadRegs(head[:n])
		if !errors.Is(err, ErrNeedMore) || need <= n {
			t.Errorf("head of %d bytes: need %d, %v; want ErrNeedMore and more", n, need, err)
		}
	}
	if _, _, err := HeadRegs(append([]byte("#!/bin/sh\n"), make([]byte, 100)...)); err == nil || errors.Is(err, ErrNeedMore) {
		t.Errorf("a script: %v, want an error", err)
	}
}

// memory is a process's memory for WalkFrames: words at addresses.
type memory map[uint64]uint64

func (m memory) ReadAt(p []byte, off int64) (int, error) {
	for i := 0; i < len(p); i += 8 {
		v, ok := m[uint64(off)+uint64(i)]
		if !ok {
			return i, io.EOF
		}
		binary.LittleEndian.PutUint64(p[i:], v)
	}
	return len(p), nil
}

func TestWalkFrames(t *testing.T) {
	// Three frames: each [fp] is the caller's fp, [fp+8] the return.
	mem := memory{0x1000: 0x1100, 0x1008: 0x401200, 0x1100: 0x1200, 0x1108: 0x401300, 0x1200: 0, 0x1208: 0x401400}
	got := WalkFrames(Regs{Machine: elf.EM_X86_64, PC: 0x401100, SP: 0xff0, FP: 0x1000}, mem)
	if want := []uint64{0x401100, 0x401200, 0x401300, 0x401400}; !reflect.DeepEqual(got, want) {
		t.Errorf("walk %x, want %x", got, want)
	}
	// A frame pointer that points down the stack ends the walk.
	mem = memory{0x1000: 0x800, 0x1008: 0x401200, 0x800: 0x2000, 0x808: 0x401300}
	if got := WalkFrames(Regs{Machine: elf.EM_X86_64, PC: 0x401100, SP: 0x700, FP: 0x1000}, mem); len(got) != 2 {
		t.Errorf("walk through a bad frame: %x, want 2 frames", got)
	}
}

//go:noinline
func knownFunction() uintptr {
	pc, _, _, _ := runtime.Caller(0)
	return pc
}

// TestSymbolizer names an address of this test binary with its own symbols.
func TestSymbolizer(t *testing.T) {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skip(err)
	}
	sym := NewSymbolizer(ParseMaps(maps), func(m Mapping) (io.ReaderAt, io.Closer, error) {
		f, err := os.Open(m.Path)
		return f, f, err
	})
	exe, _ := os.Executable()
	f := sym.Frames([]Lookup{{Addr: uint64(knownFunction())}})[0]
	if f.Function != "github.com/corecatch/corecatch/pkg/analysis.knownFunction" || f.Module == "" || f.BuildID == "" {
		t.Errorf("frame %+v, want knownFunction in %s with a build-id", f, exe)
	}
	if f := sym.Frames([]Lookup{{Addr: 8}})[0]; f.Module != "" || f.Function != "" {
		t.Errorf("an unmapped address: %+v", f)
	}
}

func frames(names ...string) []bundle.Frame {
	var out []bundle.Frame
	for i, n := range names {
		out = append(out, bundle.Frame{Function: n, Module: "app", Offset: uint64(0x1000 + i*0x10)})
	}
	return out
}

func TestSignature(t *testing.T) {
	abort := frames("__pthread_kill_implementation", "__GI_raise", "__GI_abort", "__assert_fail_base", "parse_header", "read_request", "main")
	if got := Title("SIGABRT", abort); got != "SIGABRT in parse_header (app)" {
		t.Errorf("title %q", got)
	}
	s := Signature("buildid", "SIGABRT", abort)
	moved := frames("parse_header", "read_request", "main")
	for i := range moved {
		moved[i].Offset += 0x40 // another build's layout, same functions
	}
	if Signature("buildid", "SIGABRT", moved) != s {
		t.Error("the signature depends on offsets of named frames")
	}
	for _, other := range []string{
		Signature("buildid", "SIGABRT", frames("write_record", "read_request", "main")),
		Signature("buildid", "SIGSEGV", abort),
		Signature("other", "SIGABRT", abort),
	} {
		if other == s {
			t.Error("two bugs share a signature")
		}
	}
	// Go: a signal handler's frames above the fault are dropped.
	gof := frames("runtime.raise.abi0", "runtime.sigfwdgo", "runtime.sigtrampgo", "runtime.sigtramp.abi0", "",
		"runtime.fatalpanic", "runtime.gopanic", "runtime.sigpanic", "main.parseHeader", "main.main", "runtime.main")
	if got := Title("SIGABRT", gof); got != "SIGABRT in main.parseHeader (app)" {
		t.Errorf("Go title %q", got)
	}
	// A walk that left the stack (addresses in no file) ends there: the
	// same bug keeps its signature whatever the garbage below main.
	junk := append(frames("crash_here", "main"), bundle.Frame{Offset: 0x7ffd1234}, bundle.Frame{Offset: 0x5})
	junk2 := append(frames("crash_here", "main"), bundle.Frame{Offset: 0x7ffe9999})
	if Signature("id", "SIGSEGV", junk) != Signature("id", "SIGSEGV", junk2) {
		t.Error("frames outside any file change the signature")
	}
	// Unnamed frames are named by module and offset.
	if got := Title("SIGSEGV", []bundle.Frame{{Module: "libfoo.so", Offset: 0x1c40}}); got != "SIGSEGV in libfoo.so+0x1c40" {
		t.Errorf("unnamed title %q", got)
	}
}

func TestParseGDB(t *testing.T) {
	out := []byte(`@@crashed
$1 = 0x55555555513d
#0  crash_here (p=...) at segv.c:4
#1  0x0000555555555160 in main () at segv.c:9
@@threads
$2 = 0x7ffff7e9a1b0
$3 = 0x55555555513d
@@all

Thread 2 (Thread 0x7ffff7d8a6c0 (LWP 4242)):
#0  0x00007ffff7e9a1b0 in read () from /lib/x86_64-linux-gnu/libc.so.6
#1  0x0000555555555190 in ?? ()

Thread 1 (Thread 0x7ffff7d8b740 (LWP 4241)):
#0  crash_here (p=...) at segv.c:4
`)
	sym := NewSymbolizer(nil, nil)
	crashed, threads := parseGDB(out, sym)
	if len(crashed) != 2 || crashed[0].Function != "crash_here" || crashed[0].File != "segv.c" || crashed[0].Line != 4 ||
		crashed[0].Offset != 0x55555555513d || crashed[1].Function != "main" {
		t.Errorf("crashed %+v", crashed)
	}
	if len(threads) != 2 || threads[0].ID != 4242 || len(threads[0].Frames) != 2 || threads[0].Frames[0].Function != "read" ||
		threads[0].Frames[1].Function != "" || threads[1].ID != 4241 || threads[1].Frames[0].Offset != 0x55555555513d {
		t.Errorf("threads %+v", threads)
	}
}

func TestHsErrFrame(t *testing.T) {
	for log, want := range map[string]bundle.Frame{
		"#\n# Problematic frame:\n# C  [libc.so.6+0x16a5f3]  __strlen_avx2+0x13\n": {Module: "libc.so.6", Offset: 0x16a5f3, Function: "__strlen_avx2"},
		"# Problematic frame:\n# V  [libjvm.so+0x5e4b2c]  JNI_ArgumentPusher::iterate(unsigned long)+0x1c\n": {Module: "libjvm.so", Offset: 0x5e4b2c,
			Function: "JNI_ArgumentPusher::iterate(unsigned long)"},
		"# Problematic frame:\n# J 123 c2 java.lang.String.length()I (11 bytes) @ 0x00007f\n": {Function: "123 c2 java.lang.String.length()I (11 bytes) @ 0x00007f"},
	} {
		got, ok := HsErrFrame([]byte(log))
		if !ok || got != want {
			t.Errorf("%q: %+v, want %+v", log, got, want)
		}
	}
	if _, ok := HsErrFrame([]byte("no frame here")); ok {
		t.Error("a log without a problematic frame gave one")
	}
}

func TestParseMaps(t *testing.T) {
	maps := ParseMaps([]byte(fmt.Sprintf("%s\n%s\n%s\n",
		"55d0c0a00000-55d0c0a01000 r-xp 00001000 08:01 1234 /usr/bin/app",
		"7f0000000000-7f0000001000 rw-p 00000000 00:00 0 [heap]",
		"7f0000002000-7f0000003000 r-xp 00002000 08:01 99 /tmp/with space (deleted)")))
	want := []Mapping{{Start: 0x55d0c0a00000, End: 0x55d0c0a01000, Offset: 0x1000, Path: "/usr/bin/app"},
		{Start: 0x7f0000002000, End: 0x7f0000003000, Offset: 0x2000, Path: "/tmp/with space"}}
	if !reflect.DeepEqual(maps, want) {
		t.Errorf("maps %+v", maps)
	}
}
