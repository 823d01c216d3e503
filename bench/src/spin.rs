//! `spantrack-bench spin --calls N [--mode plain|tracked|in-span|pairs]`: a tight loop of `getpid()`
//! for profiling the system-call probe path with `perf record` (the microbench mixes all its
//! phases in one process). `plain`: no registration; `tracked`: the process is registered,
//! no span open; `in-span`: one span open around the whole loop (threshold set very high by
//! the caller, `max_calls` limits what is itemised). Prints guest ns per call.

use std::ffi::CString;

use spantrack_uapi as uapi;

use crate::{die, mono_ns, Opts};

/// Opens `path` (close-on-exec) or dies.
pub(crate) fn open(path: &str, flags: i32) -> i32 {
    let c = CString::new(path).unwrap_or_else(|_| die("path"));
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        die(&format!("open {path}: {}", std::io::Error::last_os_error()));
    }
    fd
}

pub fn run(opts: &Opts) {
    let calls: u64 = opts.num("calls", 1_000_000);
    let mode = opts.get("mode").unwrap_or("in-span");
    let line = b"0123456789abcdef0123456789abcdef 0123456789abcdef\n";
    let mut end = -1;
    if mode != "plain" {
        let ctl = open(uapi::PROC_CONTROL, libc::O_RDONLY);
        if spantrack_sys::ioctl_plain(ctl, uapi::IOCTL_REGISTER).is_err() {
            die("REGISTER failed");
        }
    }
    if mode == "in-span" {
        let begin = open(uapi::PROC_BEGIN, libc::O_WRONLY);
        end = open(uapi::PROC_END, libc::O_WRONLY);
        // SAFETY: valid buffer.
        if unsafe { libc::write(begin, line.as_ptr().cast(), line.len()) } != line.len() as isize {
            die("begin write failed");
        }
    }
    if mode == "pairs" {
        // Span begin+end pairs (fast spans): what a sampled span costs the service thread.
        let begin = open(uapi::PROC_BEGIN, libc::O_WRONLY);
        let end = open(uapi::PROC_END, libc::O_WRONLY);
        let t0 = mono_ns();
        for _ in 0..calls {
            // SAFETY: valid buffers.
            let ok = unsafe {
                libc::write(begin, line.as_ptr().cast(), line.len()) == line.len() as isize
                    && libc::write(end, line.as_ptr().cast(), line.len()) == line.len() as isize
            };
            if !ok {
                die("begin/end write failed");
            }
        }
        let dt = mono_ns() - t0;
        println!("span pairs: {:.1} ns per begin+end pair", dt as f64 / calls as f64);
        return;
    }
    let t0 = mono_ns();
    for _ in 0..calls {
        // SAFETY: plain system call.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    let dt = mono_ns() - t0;
    if end >= 0 {
        // SAFETY: valid buffer.
        unsafe { libc::write(end, line.as_ptr().cast(), line.len()) };
    }
    println!("getpid {mode}: {:.1} ns per call", dt as f64 / calls as f64);
}
