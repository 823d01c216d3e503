//! Micro-costs of spantrack, measured inside the guest: one `getpid()` on a thread that is
//! not tracked, tracked without an open span, and inside an open span (itemised and past
//! the per-span limit), and one span begin+end pair (fast, and slow with a relay record);
//! and the scheduler probes (issue 12): a context switch between two threads pinned to one
//! CPU that wake each other through pipes, untracked and inside spans, with the sysfs
//! `sched` switch on and off (the difference is the probes' cost per switch).
//!
//! `spantrack-microbench baseline` measures a plain `getpid()` (run it before `insmod`);
//! `spantrack-microbench module` measures the rest (module loaded). Figures are guest
//! nanoseconds per operation (CLOCK_MONOTONIC); under QEMU `-icount shift=0` a guest
//! nanosecond is one executed instruction, which makes them repeatable.

use std::ffi::CString;

use spantrack_uapi as uapi;

const CALLS: u64 = 200_000;
const PAIRS: u64 = 20_000;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn getpid_loop(n: u64) -> f64 {
    let t0 = mono_ns();
    for _ in 0..n {
        // SAFETY: plain system call.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    (mono_ns() - t0) as f64 / n as f64
}

fn open(path: &str, flags: i32) -> i32 {
    let c = CString::new(path).unwrap();
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open {path}: {}", std::io::Error::last_os_error());
    fd
}

fn sysfs_set(name: &str, v: &str) {
    std::fs::write(format!("{}/{name}", uapi::SYSFS_DIR), v).unwrap_or_else(|e| panic!("{name}: {e}"));
}

fn line(i: u64) -> [u8; 50] {
    let s = format!("{:032x} {:016x}\n", 0xabcd_0000_0000_0000_0000_0000_0000_0000u128 | i as u128, i + 1);
    s.as_bytes().try_into().unwrap()
}

fn write_line(fd: i32, l: &[u8; 50]) {
    // SAFETY: valid buffer.
    let r = unsafe { libc::write(fd, l.as_ptr() as *const libc::c_void, l.len()) };
    assert_eq!(r, 50, "span write: {}", std::io::Error::last_os_error());
}

/// `per_span` iterations of `f` inside spans `a` and `b` (both open), for `CALLS`
/// iterations in all; guest ns per iteration.
fn in_two_spans(begin: i32, end: i32, first: u64, mut f: impl FnMut(u64, u64)) -> f64 {
    let per_span = 200u64;
    let mut t = 0u64;
    for i in 0..CALLS / per_span {
        let (la, lb) = (line(first + 2 * i), line(first + 2 * i + 1));
        write_line(begin, &la);
        write_line(begin, &lb);
        let (a, b) = (first + 2 * i + 1, first + 2 * i + 2); // the span ids of `line`
        let t0 = mono_ns();
        for _ in 0..per_span {
            f(a, b);
        }
        t += mono_ns() - t0;
        write_line(end, &la);
        write_line(end, &lb);
    }
    t as f64 / CALLS as f64
}

/// Attribution by activation: the cost of a call on a thread with an active-span slot, and
/// of a switch (the slot changes between two calls: the runtime's store plus the module's
/// look-up of the new span at the next call).
fn activation(begin: i32, end: i32, ctl: i32) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    sysfs_set("threshold_ns", "3600000000000");
    let slot = Box::new(AtomicU64::new(0));
    // The slot outlives its registration (cleared below); 8-aligned.
    let r = spantrack_sys::set_active_slot(ctl, slot.as_ptr());
    assert_eq!(r, Ok(()), "SET_ACTIVE_SLOT");
    getpid_loop(10_000);
    println!("getpid, slot thread, no span open          {:8.1} ns", getpid_loop(CALLS));
    let getpid = || {
        // SAFETY: plain system call.
        unsafe { libc::syscall(libc::SYS_getpid) };
    };
    let idle = in_two_spans(begin, end, 3_000_000, |_, _| {
        slot.store(0, Relaxed);
        getpid();
    });
    println!("getpid, slot thread, slot 0 (spans open)    {:8.1} ns", idle);
    let steady = in_two_spans(begin, end, 4_000_000, |a, _| {
        slot.store(a, Relaxed);
        getpid();
    });
    println!("getpid, slot thread, active span (itemised) {:8.1} ns", steady);
    let switching = in_two_spans(begin, end, 5_000_000, |a, b| {
        let v = slot.load(Relaxed);
        slot.store(if v == a { b } else { a }, Relaxed);
        getpid();
    });
    println!("getpid after a switch (store + getpid)      {:8.1} ns", switching);
    println!("switch (kernel look-up + store)             {:8.1} ns", switching - steady);
    let _ = spantrack_sys::set_active_slot(ctl, std::ptr::null());
}

const ROUND_TRIPS: u64 = 20_000;

/// Pins the calling thread to CPU 0.
fn pin_cpu0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity get
    // valid pointers to it.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Guest ns per context switch: two threads pinned to CPU 0 pass a byte back and forth
/// through two pipes `ROUND_TRIPS` times (two switches per round trip). With `spans`, each
/// thread runs inside its own open span (begin/end fds) meanwhile.
fn pingpong(spans: Option<(i32, i32)>) -> f64 {
    let mut a = [0i32; 2];
    let mut b = [0i32; 2];
    // SAFETY: valid out arrays of two fds.
    unsafe {
        assert_eq!(libc::pipe(a.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(b.as_mut_ptr()), 0);
    }
    let byte = |fd: i32, write: bool| {
        let mut c = 0u8;
        // SAFETY: one byte to or from a valid local.
        let r = unsafe {
            if write {
                libc::write(fd, (&c as *const u8).cast(), 1)
            } else {
                libc::read(fd, (&mut c as *mut u8).cast(), 1)
            }
        };
        assert_eq!(r, 1);
    };
    let (ar, aw, br, bw) = (a[0], a[1], b[0], b[1]);
    let peer = std::thread::spawn(move || {
        pin_cpu0();
        let l = line(7_000_000);
        if let Some((begin, _)) = spans {
            write_line(begin, &l);
        }
        for _ in 0..ROUND_TRIPS {
            byte(ar, false);
            byte(bw, true);
        }
        if let Some((_, end)) = spans {
            write_line(end, &l);
        }
    });
    pin_cpu0();
    let l = line(7_000_001);
    if let Some((begin, _)) = spans {
        write_line(begin, &l);
    }
    let t0 = mono_ns();
    for _ in 0..ROUND_TRIPS {
        byte(aw, true);
        byte(br, false);
    }
    let t = mono_ns() - t0;
    if let Some((_, end)) = spans {
        write_line(end, &l);
    }
    peer.join().unwrap();
    for fd in [ar, aw, br, bw] {
        // SAFETY: our own fds.
        unsafe { libc::close(fd) };
    }
    // SAFETY: a zeroed set, filled with every CPU, is valid.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        for c in 0..64 {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    t as f64 / (2 * ROUND_TRIPS) as f64
}

/// The scheduler probes' cost: context switches with `sched` on and off.
fn sched_costs(begin: i32, end: i32) {
    let spans = Some((begin, end));
    sysfs_set("sched", "0");
    pingpong(spans);
    let off = pingpong(spans);
    println!("context switch, in spans, sched off         {:8.1} ns", off);
    sysfs_set("sched", "1");
    sysfs_set("sched_stacks", "0");
    pingpong(spans);
    let nostacks = pingpong(spans);
    println!("context switch, in spans, sched on, no stacks {:6.1} ns", nostacks);
    sysfs_set("sched_stacks", "1");
    let on = pingpong(spans);
    println!("context switch, in spans, sched on + stacks {:8.1} ns", on);
    println!("  scheduler probes per switch (on - off)    {:8.1} ns", nostacks - off);
    println!("  stacks per blocking switch                {:8.1} ns", on - nostacks);
    println!("context switch, not in a span, sched on     {:8.1} ns", pingpong(None));
    // A slow span's record, with and without its scheduler part.
    sysfs_set("threshold_ns", "0");
    for (v, what) in [("0", "off"), ("1", "on")] {
        sysfs_set("sched", v);
        let n = 100u64;
        let t0 = mono_ns();
        for i in 0..n {
            let l = line(8_000_000 + i + if v == "1" { n } else { 0 });
            write_line(begin, &l);
            write_line(end, &l);
        }
        println!("span begin+end pair, slow, sched {what:<3}        {:8.1} ns", (mono_ns() - t0) as f64 / n as f64);
    }
    sysfs_set("threshold_ns", "3600000000000");
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "baseline" {
        getpid_loop(10_000);
        println!("getpid, no module                          {:8.1} ns", getpid_loop(CALLS));
        pingpong(None);
        println!("context switch, no module                  {:8.1} ns", pingpong(None));
        return;
    }
    getpid_loop(10_000);
    println!("getpid, module loaded, thread not tracked   {:8.1} ns", getpid_loop(CALLS));

    let ctl = open(uapi::PROC_CONTROL, libc::O_RDONLY);
    assert_eq!(spantrack_sys::ioctl_plain(ctl, uapi::IOCTL_REGISTER), Ok(()), "REGISTER");
    let begin = open(uapi::PROC_BEGIN, libc::O_WRONLY);
    let end = open(uapi::PROC_END, libc::O_WRONLY);
    println!("getpid, tracked thread, no open span        {:8.1} ns", getpid_loop(CALLS));

    // Inside a span: the first max_calls calls are itemised, later ones only counted.
    sysfs_set("threshold_ns", "3600000000000");
    let per_span = 200u64;
    let spans = CALLS / per_span;
    let mut inside = 0u64;
    for i in 0..spans {
        let l = line(i);
        write_line(begin, &l);
        let t0 = mono_ns();
        for _ in 0..per_span {
            // SAFETY: plain system call.
            unsafe { libc::syscall(libc::SYS_getpid) };
        }
        inside += mono_ns() - t0;
        write_line(end, &l);
    }
    println!("getpid, in an open span (itemised)          {:8.1} ns", inside as f64 / CALLS as f64);
    sysfs_set("max_calls", "0");
    let l = line(1 << 40);
    write_line(begin, &l);
    let unitemised = getpid_loop(CALLS);
    write_line(end, &l);
    sysfs_set("max_calls", "256");
    println!("getpid, in an open span (past max_calls)    {:8.1} ns", unitemised);

    // Begin+end pairs: fast (no record), then slow (threshold 0: one relay record each).
    let t0 = mono_ns();
    for i in 0..PAIRS {
        let l = line(1_000_000 + i);
        write_line(begin, &l);
        write_line(end, &l);
    }
    println!("span begin+end pair, fast (no record)       {:8.1} ns", (mono_ns() - t0) as f64 / PAIRS as f64);
    sysfs_set("threshold_ns", "0");
    let n = 300u64; // 1544-byte records: with the 2 x 100 below, within a CPU's 1 MiB relay buffer
    let t0 = mono_ns();
    for i in 0..n {
        let l = line(2_000_000 + i);
        write_line(begin, &l);
        write_line(end, &l);
    }
    println!("span begin+end pair, slow (relay record)    {:8.1} ns", (mono_ns() - t0) as f64 / n as f64);
    activation(begin, end, ctl);
    sched_costs(begin, end);
    sysfs_set("threshold_ns", "1000000");
    let stats = std::fs::read_to_string(uapi::PROC_STATS).unwrap_or_default();
    for l in stats.lines().filter(|l| l.starts_with("records_")) {
        println!("  {l}");
    }
    let _ = spantrack_sys::ioctl_plain(ctl, uapi::IOCTL_UNREGISTER);
}
