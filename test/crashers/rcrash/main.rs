// rcrash: a Rust program that dies three ways. "parse x": a panic
// (built with -C panic=abort, it aborts at once); "ffi x": a panic in an
// extern "C" function, which cannot unwind, so the runtime aborts;
// "abort": a panic caught, then std::process::abort.
use std::process;

fn parse(s: &str) -> u32 {
    s.parse::<u32>().expect("header length is not a number")
}

extern "C" fn ffi_parse(p: *const u8, n: usize) -> u32 {
    let s = unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(p, n)) };
    parse(s)
}

fn give_up() -> ! {
    process::abort()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = args.get(2).map(String::as_str).unwrap_or("x");
    match args.get(1).map(String::as_str) {
        Some("ffi") => println!("{}", ffi_parse(arg.as_ptr(), arg.len())),
        Some("abort") => {
            if std::panic::catch_unwind(|| parse(arg)).is_err() {
                give_up()
            }
        }
        _ => println!("{}", parse(arg)),
    }
}
