//! `spantrack-bench scale --threads T --seconds S --mode plain|in-span|in-slot
//! [--calls-per-span K]`: issue 16's contention benchmark. T threads run for S seconds (wall
//! clock), each in a loop of spans of its own: (`in-span`: write the span's begin) K timed
//! `getpid()` calls (`in-span`: write its end). `plain`: no registration, no begin/end (the
//! module need not be loaded); `in-span`: the process registers first, so that its threads
//! are tracked from birth (the thread-creation probe), and every call is a tracked call
//! inside an open span (the caller sets threshold_ns high: no record is written).
//! `in-slot`: the same, as an async runtime does it: each thread has an active-span slot
//! (`IOCTL_SET_ACTIVE_SLOT`) and stores the span's id in it after the begin and 0 before
//! the end, so every call is charged through the slot. Prints one JSON line: calls and spans done,
//! calls per second, p50/p99 per call and per span (guest CLOCK_MONOTONIC, every call timed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use spantrack_uapi as uapi;

use crate::spin::open;
use crate::{die, mono_ns, Opts};

/// Samples kept per thread (the first ones; the counts are exact).
const MAX_SAMPLES: usize = 400_000;

#[derive(Default)]
struct Out {
    calls: u64,
    spans: u64,
    call_ns: Vec<u32>,
    span_ns: Vec<u32>,
}

fn write_line(fd: i32, line: &[u8]) {
    // SAFETY: valid buffer.
    if unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) } != line.len() as isize {
        die(&format!("begin/end write failed: {}", std::io::Error::last_os_error()));
    }
}

/// How the worker's calls are put in its spans.
#[derive(Clone, Copy)]
struct Spans {
    begin: i32,
    end: i32,
    /// The control file, to set each thread's active-span slot (`in-slot`).
    slot_ctl: Option<i32>,
}

fn worker(idx: usize, k: u32, fds: Option<Spans>, stop: &AtomicBool, start: &Barrier) -> Out {
    let mut out = Out {
        call_ns: Vec::with_capacity(MAX_SAMPLES),
        span_ns: Vec::with_capacity(MAX_SAMPLES / 8),
        ..Out::default()
    };
    let mut line = *b"00000000000000000000000000000000 0000000000000000\n";
    let trace = format!("{:032x}", 0x5ca1e000_0000_0000_0000_0000_0000_0000u128 + idx as u128 + 1);
    line[..32].copy_from_slice(trace.as_bytes());
    // The thread's active-span slot (`in-slot`): read by the kernel at each call.
    let slot = Box::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(ctl) = fds.and_then(|f| f.slot_ctl) {
        if spantrack_sys::set_active_slot(ctl, slot.as_ptr()).is_err() {
            die("IOCTL_SET_ACTIVE_SLOT failed");
        }
    }
    start.wait();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let t_span = mono_ns();
        if let Some(f) = fds {
            // Span ids unique across threads (the activation index is keyed by span id).
            let id = ((idx as u64 + 1) << 40) | n;
            line[33..49].copy_from_slice(format!("{id:016x}").as_bytes());
            write_line(f.begin, &line);
            slot.store(id, Ordering::Relaxed);
        }
        for _ in 0..k {
            let t0 = mono_ns();
            // SAFETY: plain system call.
            unsafe { libc::syscall(libc::SYS_getpid) };
            let dt = mono_ns() - t0;
            if out.call_ns.len() < MAX_SAMPLES {
                out.call_ns.push(u32::try_from(dt).unwrap_or(u32::MAX));
            }
        }
        if let Some(f) = fds {
            slot.store(0, Ordering::Relaxed);
            write_line(f.end, &line);
        }
        let ds = mono_ns() - t_span;
        if out.span_ns.len() < out.span_ns.capacity() {
            out.span_ns.push(u32::try_from(ds).unwrap_or(u32::MAX));
        }
        out.calls += u64::from(k);
        out.spans += 1;
    }
    // The kernel reads the slot until it is cleared: clear it before it is freed.
    if let Some(ctl) = fds.and_then(|f| f.slot_ctl) {
        let _ = spantrack_sys::set_active_slot(ctl, std::ptr::null());
    }
    out
}

fn pct(v: &mut [u32], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    u64::from(v[i])
}

pub fn run(opts: &Opts) {
    let threads: usize = opts.num("threads", 1);
    let seconds: f64 = opts.num("seconds", 3.0);
    let k: u32 = opts.num("calls-per-span", 16);
    let mode = opts.get("mode").unwrap_or("in-span").to_string();
    if threads == 0 || k == 0 || seconds <= 0.0 {
        die("--threads, --calls-per-span and --seconds must be positive");
    }
    let fds = match mode.as_str() {
        "plain" => None,
        "in-span" | "in-slot" => {
            let ctl = open(uapi::PROC_CONTROL, libc::O_RDONLY);
            if spantrack_sys::ioctl_plain(ctl, uapi::IOCTL_REGISTER).is_err() {
                die("REGISTER failed");
            }
            Some(Spans {
                begin: open(uapi::PROC_BEGIN, libc::O_WRONLY),
                end: open(uapi::PROC_END, libc::O_WRONLY),
                slot_ctl: (mode == "in-slot").then_some(ctl),
            })
        }
        m => die(&format!("--mode {m:?}: plain, in-span or in-slot")),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (stop, start) = (Arc::clone(&stop), Arc::clone(&start));
            std::thread::Builder::new()
                .name(format!("scale-{i}"))
                .spawn(move || worker(i, k, fds, &stop, &start))
                .unwrap_or_else(|e| die(&format!("spawn: {e}")))
        })
        .collect();
    start.wait();
    let t0 = mono_ns();
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let outs: Vec<Out> = handles.into_iter().map(|h| h.join().unwrap_or_else(|_| die("a thread panicked"))).collect();
    let wall = (mono_ns() - t0) as f64 / 1e9;
    let calls: u64 = outs.iter().map(|o| o.calls).sum();
    let spans: u64 = outs.iter().map(|o| o.spans).sum();
    let mut call_ns: Vec<u32> = outs.iter().flat_map(|o| o.call_ns.iter().copied()).collect();
    let mut span_ns: Vec<u32> = outs.iter().flat_map(|o| o.span_ns.iter().copied()).collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "{{\"threads\":{threads},\"mode\":\"{mode}\",\"cpus\":{cpus},\"calls_per_span\":{k},\"wall_s\":{wall:.4},\"calls\":{calls},\"spans\":{spans},\"calls_per_s\":{:.0},\"call_p50_ns\":{},\"call_p99_ns\":{},\"span_p50_ns\":{},\"span_p99_ns\":{}}}",
        calls as f64 / wall,
        pct(&mut call_ns, 0.5),
        pct(&mut call_ns, 0.99),
        pct(&mut span_ns, 0.5),
        pct(&mut span_ns, 0.99),
    );
}
