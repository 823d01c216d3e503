//! The other fixed capacities, each filled and overflowed by an exact amount:
//! - process table: 64 forked children register, the next REGISTER fails with ENOSPC and
//!   is counted (`processes_refused`); a registered child still works;
//! - thread table: threads of one process past the capacity are not tracked (counted in
//!   `threads_refused`; their begins fail with EPERM);
//! - call-chunk pool: spans itemising `max_calls` calls each until the pool is empty; the
//!   next span's calls are counted (`calls_unitemised_pool`) and its record is flagged
//!   `REC_POOL_EXHAUSTED`; once the pool is free again a span gets its exact record.

use super::reader::{BulkReader, Rec};
use super::{ioctl0, key3, raw_getpid, span_write, wait_until, Report, Rng};
use crate::fig;
use crate::span::LINE_LEN;
use crate::sys::{self, errno_name, Fd};
use crate::sysfs::{self, Stats, TunableGuard};
use spantrack_uapi as uapi;
use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn run(rep: &mut Report) {
    let _g = match TunableGuard::save() {
        Ok(g) => g,
        Err(e) => {
            rep.check("capacity: setup", Err(e));
            return;
        }
    };
    // Spans stay open for the whole run: a run stretched past timeout_ns's 60 s by a busy
    // host would see them expire.
    if let Err(e) = sysfs::set(sysfs::TIMEOUT, "86400000000000") {
        rep.check("capacity: setup", Err(e));
        return;
    }
    // Forks first, while this process has a single thread.
    if let Err(e) = processes(rep) {
        rep.check("capacity: process table setup", Err(e));
    }
    if let Err(e) = threads(rep) {
        rep.check("capacity: thread table setup", Err(e));
    }
    if let Err(e) = chunks(rep) {
        rep.check("capacity: chunk pool setup", Err(e));
    }
}

fn pipe() -> Result<(i32, i32), String> {
    let mut p = [0i32; 2];
    // SAFETY: valid array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", errno_name(sys::errno())));
    }
    Ok((p[0], p[1]))
}

fn processes(rep: &mut Report) -> Result<(), String> {
    let s0 = Stats::read()?;
    let cap = s0.get("process_capacity")?;
    let free = cap - s0.get("processes")?;
    let n = free + 1;
    // Children block on `rel` until it closes; child 0 waits for a byte on `go`, then
    // shows that a registered process works while the table is full.
    let (rel_r, rel_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let mut kids: Vec<(i32, i32)> = Vec::new();
    let mut hist = super::Hist::default();
    let t0 = Instant::now();
    let _ = std::io::stdout().flush();
    for i in 0..n {
        let (r, w) = pipe()?;
        // SAFETY: single-threaded here.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: child: plain calls, then _exit.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::close(rel_w);
                libc::close(go_w);
                let reg = match Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY) {
                    Ok(c) => {
                        let x = ioctl0(c.raw(), uapi::IOCTL_REGISTER);
                        std::mem::forget(c);
                        x
                    }
                    Err(_) => 255,
                };
                libc::write(w, [reg as u8].as_ptr().cast(), 1);
                if i == 0 {
                    let mut buf = [0u8; 1];
                    libc::read(go_r, buf.as_mut_ptr().cast(), 1);
                    let mut res = 1u8;
                    if let (Ok(b), Ok(e)) = (Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY), Fd::open(uapi::PROC_END, libc::O_WRONLY)) {
                        let l = key3(7, 7, 7).line();
                        if span_write(b.raw(), &l) == 0 && span_write(e.raw(), &l) == 0 {
                            res = 0;
                        }
                    }
                    libc::write(w, [res].as_ptr().cast(), 1);
                }
                let mut buf = [0u8; 1];
                libc::read(rel_r, buf.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        // SAFETY: our fd.
        unsafe { libc::close(w) };
        if pid < 0 {
            // SAFETY: our fd.
            unsafe { libc::close(r) };
            break;
        }
        kids.push((pid, r));
        hist.add(wait_byte(r).map_or(-1, i32::from));
    }
    let s_full = Stats::read()?;
    // SAFETY: our fd: child 0 goes on.
    unsafe { libc::write(go_w, [1u8].as_ptr().cast(), 1) };
    let span_ok = kids.first().and_then(|&(_, r)| wait_byte(r)) == Some(0);
    // SAFETY: our fds: every child's read of `rel` returns 0, they exit.
    unsafe {
        libc::close(rel_w);
        libc::close(rel_r);
        libc::close(go_w);
        libc::close(go_r);
    }
    for &(pid, rfd) in &kids {
        // SAFETY: our child and fd.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(rfd);
        }
    }
    let mut s1 = Stats::read()?;
    let back = wait_until(Duration::from_secs(5), || {
        s1 = Stats::read().unwrap_or(s1.clone());
        s1.get("processes").ok() == s0.get("processes").ok()
    });
    fig!(
        "capacity: process table {cap}, {free} free: {n} children tried to register in {:.1} s: {}; span of a registered child with the table full: {}",
        t0.elapsed().as_secs_f64(),
        hist.describe(),
        if span_ok { "ok" } else { "FAILED" }
    );
    rep.check(
        "capacity: process table: exactly the free slots register, the next REGISTER fails with ENOSPC (counted in processes_refused), a registered process still works, all are forgotten at exit",
        (|| {
            let mut bad = Vec::new();
            if hist.get(0) != free || hist.get(libc::ENOSPC) != 1 || hist.total() != n {
                bad.push(hist.describe());
            }
            if !span_ok {
                bad.push("the registered child's span failed".into());
            }
            if let Err(e) = s_full.expect_deltas(&s0, &[("processes_registered", free as i128), ("processes_refused", 1), ("processes", free as i128)]) {
                bad.push(e);
            }
            if !back {
                bad.push(format!("processes {} after the children exited", s1.get("processes")?));
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );
    Ok(())
}

/// Reads one byte from a child's pipe (bounded).
fn wait_byte(fd: i32) -> Option<u8> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd.
    if unsafe { libc::poll(&mut p, 1, 20_000) } <= 0 {
        return None;
    }
    let mut b = [0u8; 1];
    // SAFETY: valid buffer.
    let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
    (r == 1).then_some(b[0])
}

fn threads(rep: &mut Report) -> Result<(), String> {
    let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
    let begin = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
    let end = Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
    sys::ioctl_plain(control.raw(), uapi::IOCTL_REGISTER).map_err(|e| format!("REGISTER: {}", errno_name(e)))?;
    let s0 = Stats::read()?;
    let cap = s0.get("thread_capacity")?;
    let free = cap - s0.get("threads")?;
    let excess = 20u64;
    let n = free + excess;
    let mut p = [0i32; 2];
    // SAFETY: valid array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err("pipe".into());
    }
    let (rel_r, rel_w) = (p[0], p[1]);
    let (b, e) = (begin.raw(), end.raw());
    let (tx, rx) = mpsc::channel::<i32>();
    let t0 = Instant::now();
    let mut hs = Vec::new();
    let mut spawn_err = None;
    for i in 0..n {
        let tx = tx.clone();
        match std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let l: [u8; LINE_LEN] = key3(11, 11, i).line();
            let rb = span_write(b, &l);
            if rb == 0 {
                span_write(e, &l);
            }
            let _ = tx.send(rb);
            let mut buf = [0u8; 1];
            // SAFETY: blocks until the main thread closes the write end.
            unsafe { libc::read(rel_r, buf.as_mut_ptr().cast(), 1) };
        }) {
            Ok(h) => hs.push(h),
            Err(err) => {
                spawn_err = Some(format!("thread {i}: {err}"));
                break;
            }
        }
    }
    drop(tx);
    let mut hist = super::Hist::default();
    for _ in 0..hs.len() {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(r) => hist.add(r),
            Err(_) => break,
        }
    }
    let s_full = Stats::read()?;
    let t_spawn = t0.elapsed();
    // SAFETY: our fd: releases every thread.
    unsafe { libc::close(rel_w) };
    for h in hs {
        let _ = h.join();
    }
    // SAFETY: our fd.
    unsafe { libc::close(rel_r) };
    let mut s1 = Stats::read()?;
    let back = wait_until(Duration::from_secs(10), || {
        s1 = Stats::read().unwrap_or(s1.clone());
        s1.get("threads").ok() == s0.get("threads").ok()
    });
    fig!(
        "capacity: thread table {cap}, {free} free: {n} threads started in {:.1} s, their begins: {}",
        t_spawn.as_secs_f64(),
        hist.describe()
    );
    rep.check(
        "capacity: thread table: threads past the capacity are refused (threads_refused) and their begins fail with EPERM; all leave the table at exit",
        (|| {
            let mut bad = Vec::new();
            if let Some(e) = &spawn_err {
                bad.push(e.clone());
            }
            if hist.get(0) != free || hist.get(libc::EPERM) != excess || hist.total() != n {
                bad.push(format!("{} (expected ok:{free} EPERM:{excess})", hist.describe()));
            }
            if let Err(e) = s_full.expect_deltas(
                &s0,
                &[("threads_added", free as i128), ("threads_refused", excess as i128), ("begins_untracked", excess as i128), ("spans_begun", free as i128)],
            ) {
                bad.push(e);
            }
            if s_full.get("threads")? != cap {
                bad.push(format!("threads gauge {} at capacity {cap}", s_full.get("threads")?));
            }
            if !back {
                bad.push(format!("threads {} after they exited (before {})", s1.get("threads")?, s0.get("threads")?));
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );
    let _ = sys::ioctl_plain(control.raw(), uapi::IOCTL_UNREGISTER);
    Ok(())
}

/// A thread that runs jobs in order.
struct Job {
    tx: mpsc::Sender<Box<dyn FnOnce() + Send>>,
    h: std::thread::JoinHandle<()>,
}

fn job_thread() -> Job {
    let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
    let h = std::thread::spawn(move || {
        for f in rx {
            f();
        }
    });
    Job { tx, h }
}

fn chunks(rep: &mut Report) -> Result<(), String> {
    let pid = sys::getpid();
    let control = Fd::open(uapi::PROC_CONTROL, libc::O_RDONLY)?;
    let begin = Fd::open(uapi::PROC_BEGIN, libc::O_WRONLY)?;
    let end = Fd::open(uapi::PROC_END, libc::O_WRONLY)?;
    let (b, e) = (begin.raw(), end.raw());
    sys::ioctl_plain(control.raw(), uapi::IOCTL_REGISTER).map_err(|e| format!("REGISTER: {}", errno_name(e)))?;
    let info = sys::ioctl_info(control.raw()).map_err(|e| format!("INFO: {}", errno_name(e)))?;
    let mut relay = BulkReader::open(pid)?;
    sysfs::set(sysfs::THRESHOLD, "3600000000000")?;
    let limit = info.max_calls_limit;
    sysfs::set(sysfs::MAX_CALLS, &limit.to_string())?;
    let s0 = Stats::read()?;
    let cap = s0.get("chunk_capacity")?;
    let per_chunk = 32u64;
    let per_span = u64::from(limit).div_ceil(per_chunk);
    let n_full = cap / per_span;
    let rem = cap - n_full * per_span;
    let depth = uapi::MAX_DEPTH as u64;
    let n_threads = n_full.div_ceil(depth);
    fig!(
        "capacity: chunk pool {cap} chunks of {per_chunk} calls; max_calls {limit} ({per_span} chunks per span): {n_full} spans fill it ({rem} chunks left), on {n_threads} threads"
    );
    let t0 = Instant::now();
    // Fill: each thread begins its spans, each followed by `limit` getpids.
    let mut jobs = Vec::new();
    let mut done = Vec::new();
    let mut lines = Vec::new();
    for t in 0..n_threads {
        let j = job_thread();
        let n = depth.min(n_full - t * depth);
        let ls: Vec<[u8; LINE_LEN]> = (0..n).map(|i| key3(21, t, i).line()).collect();
        lines.push(ls.clone());
        let (rtx, rrx) = mpsc::channel();
        let _ = j.tx.send(Box::new(move || {
            let mut bad = 0;
            for l in &ls {
                if span_write(b, l) != 0 {
                    bad += 1;
                }
                for _ in 0..limit {
                    raw_getpid();
                }
            }
            let _ = rtx.send(bad);
        }));
        // One thread at a time: the pool fills in a known order.
        done.push(rrx.recv_timeout(Duration::from_secs(300)).unwrap_or(-1));
        jobs.push(j);
    }
    let s_full = Stats::read()?;
    // The next span: what the pool still had, then nothing.
    let l = key3(22, 0, 0).line();
    let rb = span_write(b, &l);
    for _ in 0..limit {
        raw_getpid();
    }
    let s_over = Stats::read()?;
    let want_pool = u64::from(limit) - (rem * per_chunk).min(u64::from(limit));
    // A small span while the pool is still empty: its record says so. It is
    // nested in the span above, which keeps the pool's last chunks until it
    // ends (ending it first would hand them to the small span).
    sysfs::set(sysfs::THRESHOLD, "0")?;
    let k = key3(23, 0, 0);
    let kl = k.line();
    let rb2 = span_write(b, &kl);
    for _ in 0..10 {
        raw_getpid();
    }
    let re2 = span_write(e, &kl);
    // The enclosing span ends unreported.
    sysfs::set(sysfs::THRESHOLD, "3600000000000")?;
    let re = span_write(e, &l);
    let mut rng = Rng::new(1);
    let mut got: Vec<Rec> = Vec::new();
    wait_until(Duration::from_secs(2), || {
        relay.poll(0, &mut rng, |r| got.push(r));
        !got.is_empty()
    });
    fig!(
        "capacity: filled in {:.1} s: chunks_in_use {} (high water {}), the next span's {limit} calls: calls_unitemised_pool +{}",
        t0.elapsed().as_secs_f64(),
        s_full.get("chunks_in_use")?,
        s_full.get("chunks_high_water")?,
        s_over.delta(&s_full, "calls_unitemised_pool")?
    );
    rep.check(
        "capacity: chunk pool: full spans take every chunk; the next span's calls beyond the pool are counted exactly in calls_unitemised_pool; its record is flagged REC_POOL_EXHAUSTED",
        (|| {
            let mut bad = Vec::new();
            if done.iter().any(|&d| d != 0) {
                bad.push(format!("fill threads' failed begins {done:?}"));
            }
            if rb != 0 || re != 0 || rb2 != 0 || re2 != 0 {
                bad.push(format!("span writes {rb} {re} {rb2} {re2}"));
            }
            if s_full.get("chunks_in_use")? != n_full * per_span {
                bad.push(format!("chunks_in_use {} after the fill", s_full.get("chunks_in_use")?));
            }
            if s_full.delta(&s0, "calls_unitemised_pool")? != 0 {
                bad.push(format!("calls_unitemised_pool +{} during the fill", s_full.delta(&s0, "calls_unitemised_pool")?));
            }
            let d = s_over.delta(&s_full, "calls_unitemised_pool")?;
            if d != i128::from(want_pool) {
                bad.push(format!("calls_unitemised_pool +{d} for the next span, expected {want_pool}"));
            }
            match got.as_slice() {
                [r] if r.h.flags == uapi::REC_POOL_EXHAUSTED && r.h.n_entries == 0 && r.h.total_calls == 10 && r.h.unitemised_calls == 10 => {}
                other => bad.push(format!(
                    "record of the small span: {:?}",
                    other.iter().map(|r| (r.h.flags, r.h.n_entries, r.h.total_calls, r.h.unitemised_calls)).collect::<Vec<_>>()
                )),
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );
    // Free the pool: the threads end their spans, innermost first.
    let mut end_bad = 0;
    for (j, ls) in jobs.iter().zip(lines) {
        let (rtx, rrx) = mpsc::channel();
        let _ = j.tx.send(Box::new(move || {
            let n = ls.iter().rev().filter(|l| span_write(e, *l) != 0).count();
            let _ = rtx.send(n);
        }));
        end_bad += rrx.recv_timeout(Duration::from_secs(60)).unwrap_or(999);
    }
    for j in jobs {
        drop(j.tx);
        let _ = j.h.join();
    }
    let s_free = Stats::read()?;
    // And a span gets its exact record again.
    sysfs::set(sysfs::THRESHOLD, "0")?;
    let k = key3(24, 0, 0);
    let kl = k.line();
    let rb3 = span_write(b, &kl);
    let g1 = raw_getpid();
    let g2 = raw_getpid();
    let g3 = raw_getpid();
    let re3 = span_write(e, &kl);
    got.clear();
    wait_until(Duration::from_secs(2), || {
        relay.poll(0, &mut rng, |r| got.push(r));
        !got.is_empty()
    });
    sysfs::set(sysfs::THRESHOLD, "3600000000000")?;
    let s_end = Stats::read()?;
    rep.check(
        "capacity: chunk pool: once the spans end every chunk is back, and a span gets its exact record",
        (|| {
            let mut bad = Vec::new();
            if end_bad != 0 {
                bad.push(format!("{end_bad} ends failed"));
            }
            if s_free.get("chunks_in_use")? != 0 || s_free.get("open_spans")? != 0 {
                bad.push(format!("chunks_in_use {} open_spans {}", s_free.get("chunks_in_use")?, s_free.get("open_spans")?));
            }
            let want = vec![(libc::SYS_getpid as u32, g1), (libc::SYS_getpid as u32, g2), (libc::SYS_getpid as u32, g3)];
            match got.as_slice() {
                [r] if r.h.flags == 0
                    && r.h.total_calls == 3
                    && r.entries.iter().map(|e| (e.nr, e.ret)).collect::<Vec<_>>() == want
                    && r.h.span_id == k.span_id => {}
                other => bad.push(format!(
                    "{rb3}/{re3}: records {:?}",
                    other.iter().map(|r| (r.h.flags, r.h.n_entries, r.h.total_calls)).collect::<Vec<_>>()
                )),
            }
            if let Err(x) = super::conservation(&s0, &s_end) {
                bad.push(x);
            }
            if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
        })(),
    );
    let _ = sys::ioctl_plain(control.raw(), uapi::IOCTL_UNREGISTER);
    Ok(())
}
