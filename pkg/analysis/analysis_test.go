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
	// A later symbolizer (the next crash of a crash loop) finds the name
	// by the file's inode: it opens the file for its headers only, not
	// for its symbols.
	opens := 0
	again := NewSymbolizer(ParseMaps(maps), func(m Mapping) (io.ReaderAt, io.Closer, error) {
		opens++
		f, err := os.Open(m.Path)
		return f, f, err
	})
	if g := again.Frames([]Lookup{{Addr: uint64(knownFunction())}})[0]; g != f || opens != 1 {
		t.Errorf("second symbolizer: frame %+v (want %+v), %d opens (want 1: the names are cached)", g, f, opens)
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
#2  inlined_into_main () at segv.c:12
@@script
Traceback (most recent call first):
  File "/app/main.py", line 3, in read_name
    return ctypes.string_at(p)
  File "/app/main.py", line 6, in <module>
    main()
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
	u := parseGDB(out, sym)
	crashed, threads := u.Frames, u.Threads
	if len(u.Script) != 2 || u.Script[0] != (bundle.Frame{Function: "read_name", File: "/app/main.py", Line: 3, Module: "python"}) {
		t.Errorf("Python stack %+v", u.Script)
	}
	if len(crashed) != 3 || crashed[2].Offset != 0x555555555160 {
		t.Errorf("an inlined frame has not its physical frame's address: %+v", crashed)
	}
	if crashed[0].Function != "crash_here" || crashed[0].File != "segv.c" || crashed[0].Line != 4 ||
		crashed[0].Offset != 0x55555555513d || crashed[1].Function != "main" {
		t.Errorf("crashed %+v", crashed)
	}
	if len(threads) != 2 || threads[0].ID != 4242 || len(threads[0].Frames) != 2 || threads[0].Frames[0].Function != "read" ||
		threads[0].Frames[1].Function != "" || threads[1].ID != 4241 || threads[1].Frames[0].Offset != 0x55555555513d {
		t.Errorf("threads %+v", threads)
	}
}

func TestParseHsErr(t *testing.T) {
	for log, want := range map[string]HsErr{
		"#\n# Problematic frame:\n# C  [libc.so.6+0x16a5f3]  __strlen_avx2+0x13\n": {Problematic: bundle.Frame{Module: "libc.so.6", Offset: 0x16a5f3, Function: "__strlen_avx2"}, Native: true},
		"# Problematic frame:\n# V  [libjvm.so+0x5e4b2c]  JNI_ArgumentPusher::iterate(unsigned long)+0x1c\n": {Problematic: bundle.Frame{Module: "libjvm.so", Offset: 0x5e4b2c,
			Function: "JNI_ArgumentPusher::iterate(unsigned long)"}},
		"# Problematic frame:\n# J 123 c2 java.lang.String.length()I (11 bytes) @ 0x00007f\n": {Problematic: bundle.Frame{Function: "123 c2 java.lang.String.length()I (11 bytes) @ 0x00007f"}},
	} {
		got, ok := ParseHsErr([]byte(log))
		if !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("%q: %+v, want %+v", log, got, want)
		}
	}
	if _, ok := ParseHsErr([]byte("no frame here")); ok {
		t.Error("a log without a problematic frame gave one")
	}
	// A real JDK 17 log of Unsafe.putLong(0, 42): the Java method that
	// called it, and the SIGSEGV the JVM caught, not its SIGABRT.
	jvm := `#
# A fatal error has been detected by the Java Runtime Environment:
#
#  SIGSEGV (0xb) at pc=0x00007fc5a26d2f94, pid=23560, tid=23561
#
# Problematic frame:
# V  [libjvm.so+0xed2f94]  Unsafe_PutLong+0x124
#
Native frames: (J=compiled Java code, j=interpreted, Vv=VM code, C=native code)
V  [libjvm.so+0xed2f94]  Unsafe_PutLong+0x124
j  jdk.internal.misc.Unsafe.putLong(Ljava/lang/Object;JJ)V+0 java.base@17.0.15
J 61% c2 sun.misc.Unsafe.putLong(JJ)V jdk.unsupported@17.0.15 (11 bytes) @ 0x00007f [0x00007f+0x00000000000000a4]
j  Crash.store(Lsun/misc/Unsafe;)V+5
j  Crash.main([Ljava/lang/String;)V+21
v  ~StubRoutines::call_stub
`
	h, ok := ParseHsErr([]byte(jvm))
	if !ok || h.Signal != "SIGSEGV" || h.Java != "Crash.store" {
		t.Errorf("JDK log: %+v", h)
	}
	if s := Script(Clues{HsErr: []byte(jvm)}); len(s) != 4 || s[2] != (bundle.Frame{Function: "Crash.store", Module: "java"}) {
		t.Errorf("JDK log's Java frames %+v", s)
	}
	if got := Describe("SIGABRT", nil, Clues{HsErr: []byte(jvm)}); got != "SIGSEGV in Crash.store (java)" {
		t.Errorf("JVM title %q", got)
	}
	jni := "#  SIGSEGV (0xb) at pc=0x1\n# Problematic frame:\n# C  [libfoo.so+0x1c40]  parse_header+0x13\n\nNative frames:\nj  Crash.main([Ljava/lang/String;)V+21\n"
	if got := Describe("SIGABRT", nil, Clues{HsErr: []byte(jni)}); got != "SIGSEGV in parse_header (libfoo.so)" {
		t.Errorf("JNI title %q", got)
	}
}

// TestRuntimeTitles: each runtime's crash machinery is skipped, and what
// it printed names the crash.
func TestRuntimeTitles(t *testing.T) {
	// Rust, panic=abort, as gdb unwinds it.
	rust := frames("__pthread_kill_implementation", "__GI_raise", "__GI_abort", "std::sys::pal::unix::abort_internal",
		"std::process::abort", "std::rt::__rust_abort", "panic_abort::__rust_start_panic", "std::panicking::rust_panic",
		"std::panicking::panic_with_hook", "std::panicking::panic_handler::{closure#0}",
		"std::sys::backtrace::__rust_end_short_backtrace<std::panicking::panic_handler::{closure_env#0}, !>",
		"std::panicking::panic_handler", "core::panicking::panic_fmt", "core::result::unwrap_failed",
		"core::result::Result<u32, core::num::error::ParseIntError>::expect<u32, core::num::error::ParseIntError>",
		"main::parse", "main::main", "core::ops::function::FnOnce::call_once<fn(), ()>", "std::rt::lang_start::{closure#0}<()>")
	log := "2026-12-01T09:40:00.1Z stdout F starting\n2026-12-01T09:40:00.2Z stderr F thread 'main' (20295) panicked at main.rs:2:22:\n" +
		"2026-12-01T09:40:00.2Z stderr P header length is not\n2026-12-01T09:40:00.2Z stderr F  a number\n"
	if got := Describe("SIGABRT", rust, Clues{Log: []byte(log)}); got != "panic in main::parse (app): header length is not a number" {
		t.Errorf("Rust title %q", got)
	}
	if got := Describe("SIGABRT", rust, Clues{}); got != "panic in main::parse (app)" {
		t.Errorf("Rust title without a log %q", got)
	}
	if Signature("id", "SIGABRT", rust) != Signature("id", "SIGABRT", frames("main::parse", "main::main")) {
		t.Error("Rust's panic machinery or start glue enters the signature")
	}
	// A panic caught, then std::process::abort: no panic on the stack,
	// and the catch_unwind that lang_start calls main through is glue.
	caught := frames("__GI_abort", "std::sys::pal::unix::abort_internal", "std::process::abort", "main::give_up", "main::main",
		"core::ops::function::FnOnce::call_once<fn(), ()>", "std::rt::lang_start::{closure#0}<()>",
		"std::panicking::catch_unwind::do_call<&(dyn core::ops::function::Fn<(), Output=i32>), i32>", "std::rt::lang_start_internal")
	if got := Describe("SIGABRT", caught, Clues{Log: []byte(log)}); got != "SIGABRT in main::give_up (app)" {
		t.Errorf("caught panic, then abort: title %q", got)
	}
	if Signature("id", "SIGABRT", caught) != Signature("id", "SIGABRT", frames("main::give_up", "main::main")) {
		t.Error("lang_start's glue enters the signature")
	}
	// The helper's walk reads mangled names from the symbol table.
	mangled := frames("_RNvNtNtNtCsjrHSEGnQ3l9_3std3sys3pal4unix14abort_internal", "_ZN4main7give_up17h92f092d77587044eE")
	if got := Title("SIGABRT", mangled); got != "SIGABRT in main::give_up (app)" {
		t.Errorf("mangled Rust abort title %q", got)
	}
	// A panic in a function that cannot unwind: the standard library's
	// second panic follows the program's.
	if got := RustPanicMessage("thread 'main' panicked at src/ffi.rs:3:5:\nbad input\nnote: run with ...\n" +
		"thread 'main' panicked at library/core/src/panicking.rs:225:5:\npanic in a function that cannot unwind\n"); got != "bad input" {
		t.Errorf("nounwind panic message %q", got)
	}
	if got := RustPanicMessage("thread 'main' panicked at 'old style', src/main.rs:2:5\n"); got != "old style" {
		t.Errorf("old panic message %q", got)
	}
	// Node.js: the top frame of the JavaScript stack it printed.
	node := "----- Native stack trace -----\n\n 1: 0xd3a3c0  [node]\n\n----- JavaScript stack trace -----\n\n" +
		"1: parseHeader (/app/crash.js:2:29)\n2: main (/app/crash.js:5:19)\n3: /app/crash.js:6:1\n4: Module._compile (node:internal/modules/cjs/loader:1521:14)\n\n"
	if got := Describe("SIGABRT", frames("node::Abort()"), Clues{Log: []byte(node)}); got != "SIGABRT in parseHeader (crash.js:2)" {
		t.Errorf("Node title %q", got)
	}
	js := Script(Clues{Log: []byte(node)})
	if len(js) != 4 || js[0] != (bundle.Frame{Function: "parseHeader", File: "/app/crash.js", Line: 2, Module: "javascript"}) ||
		js[2].Function != "<anonymous>" || js[3].File != "node:internal/modules/cjs/loader" {
		t.Errorf("Node's JavaScript stack %+v", js)
	}
	// Python's ctypes.string_at(0): strlen faulted on its caller's pointer.
	py := []bundle.Frame{{Function: "__strlen_evex", Module: "libc.so.6"}, {Function: "string_at", Module: "_ctypes.cpython-311-x86_64-linux-gnu.so"},
		{Module: "libffi.so.8"}}
	if got := Title("SIGSEGV", py); got != "SIGSEGV in string_at (_ctypes.cpython-311-x86_64-linux-gnu.so)" {
		t.Errorf("Python title %q", got)
	}
	inLibc := []bundle.Frame{{Function: "__memmove_avx_unaligned_erms", Module: "libc.so.6"}, {Function: "_IO_file_xsputn", Module: "libc.so.6"}}
	if got := Title("SIGSEGV", inLibc); got != "SIGSEGV in __memmove_avx_unaligned_erms (libc.so.6)" {
		t.Errorf("libc-internal title %q", got)
	}
}

func TestParseMaps(t *testing.T) {
	maps := ParseMaps([]byte(fmt.Sprintf("%s\n%s\n%s\n",
		"55d0c0a00000-55d0c0a01000 r-xp 00001000 08:01 1234 /usr/bin/app",
		"7f0000000000-7f0000001000 rw-p 00000000 00:00 0 [heap]",
		"7f0000002000-7f0000003000 r-xp 00002000 08:01 99                         /tmp/with  space (deleted)\n"+
			"7f0000004000-7f0000005000 r-xp 0000zz00 08:01 99 /bad/offset\n"+
			"7f0000006000-7f0000007000 r-xp 00000000 08:01")))
	want := []Mapping{{Start: 0x55d0c0a00000, End: 0x55d0c0a01000, Offset: 0x1000, Path: "/usr/bin/app"},
		{Start: 0x7f0000002000, End: 0x7f0000003000, Offset: 0x2000, Path: "/tmp/with  space"}}
	if !reflect.DeepEqual(maps, want) {
		t.Errorf("maps %+v", maps)
	}
}
