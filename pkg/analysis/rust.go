package analysis

import (
	"regexp"
	"strings"
)

// rustPanicking tells the frames of Rust's panic machinery: the panic
// entry points of core and std, the hook that prints the message, and the
// runtime's start of unwinding or aborting. A stack holding one is a
// panic, and the panicking function is the first frame below them that is
// not the standard library's.
func rustPanicking(fn string) bool {
	fn = strings.TrimPrefix(fn, "<")
	for _, p := range []string{"core::panicking::", "std::panicking::", "rust_begin_unwind", "__rustc::rust_begin_unwind",
		"__rust_start_panic", "panic_abort::", "panic_unwind::", "rust_panic", "std::rt::__rust_abort"} {
		if strings.HasPrefix(fn, p) {
			return true
		}
	}
	return false
}

// rustGlue tells the frames by which Rust's standard library ends the
// process (std::process::abort, the platform's abort_internal), how it died
// as abort() is for C, and those by which it starts main (lang_start, the
// closures and the catch_unwind it calls main through), which every
// program shares.
func rustGlue(fn string) bool {
	fn = strings.TrimPrefix(fn, "<")
	for _, p := range []string{"std::process::abort", "std::rt::lang_start", "std::sys::backtrace::__rust_begin_short_backtrace",
		"core::ops::function::FnOnce::call_once", "core::ops::function::impls::", "std::panicking::catch_unwind",
		"std::panicking::try", "std::panic::catch_unwind"} {
		if strings.HasPrefix(fn, p) {
			return true
		}
	}
	return strings.HasPrefix(fn, "std::sys::") && strings.HasSuffix(fn, "::abort_internal")
}

// rustLibrary tells a function of Rust's standard library (core, alloc,
// std), generic instances included ("<core::result::Result<..>>::expect"):
// between the panic machinery and the panicking function they are the
// helper that panicked on its behalf (unwrap, expect, an index check).
func rustLibrary(fn string) bool {
	fn = strings.TrimPrefix(fn, "<")
	for _, p := range []string{"core::", "alloc::", "std::"} {
		if strings.HasPrefix(fn, p) {
			return true
		}
	}
	return false
}

// rustPanicked matches the line the default panic hook writes to stderr:
// "thread 'main' panicked at src/main.rs:2:22:" (Rust 1.73 and later,
// since 1.89 with the thread's id after its name) with the message on the
// lines after it, or "thread 'main' panicked at 'msg', src/main.rs:2:22"
// before.
var rustPanicked = regexp.MustCompile(`(?m)^thread '[^']*'(?: \(\d+\))? panicked at (?:'(.*)', )?(\S+?):\d+:\d+:?$`)

// RustPanicMessage returns the message of the panic a Rust program wrote
// last to its log, preferring one raised in the program's own code to the
// standard library's own ("panic in a function that cannot unwind"
// follows the panic that caused it). It returns "" when the log holds no
// panic.
func RustPanicMessage(log string) string {
	var msg string
	for _, m := range rustPanicked.FindAllStringSubmatchIndex(log, -1) {
		text := ""
		if m[2] >= 0 {
			text = log[m[2]:m[3]]
		} else {
			rest := log[m[1]:]
			rest = strings.TrimPrefix(rest, "\n")
			text, _, _ = strings.Cut(rest, "\n")
		}
		file := log[m[4]:m[5]]
		std := strings.HasPrefix(file, "library/") || strings.HasPrefix(file, "/rustc/")
		if !std || msg == "" {
			msg = strings.TrimSpace(text)
		}
	}
	return msg
}
